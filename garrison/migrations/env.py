"""alembic's environment for garrison's tables.

:mod:`garrison.ops.migrate` runs it with an open connection already in a transaction (its advisory lock
held on PostgreSQL), so every revision of one upgrade commits or rolls back together. The ``alembic``
command itself is not used: there is no ``alembic.ini``, and no offline (``--sql``) mode.
"""

from __future__ import annotations

from alembic import context

from garrison.ops.migrate import MigrationError, context_options

connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise MigrationError("garrison's migrations run through `garrison db upgrade` (garrison.ops.migrate), online only")

context.configure(connection=connection, **context_options())
with context.begin_transaction():
    context.run_migrations()
