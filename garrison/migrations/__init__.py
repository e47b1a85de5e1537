"""garrison's schema migrations (alembic), run by :mod:`garrison.migrate` and ``garrison db upgrade``."""
