"""garrison's schema migrations (alembic), run by :mod:`garrison.ops.migrate` and ``garrison db upgrade``."""
