"""A SQLAlchemy engine that runs garrison's ingest statements on Django's own database connection.

garrison's write path (:func:`garrison.core.ingest.write_events`) takes a SQLAlchemy session. To make the event
rows commit or roll back with the app's rows, that session must run on the very psycopg connection Django
is using in this thread, inside Django's transaction, and must never end that transaction itself. So:

- the pool lends ``connections[alias].connection`` (per thread, as Django keeps it) and never closes or
  resets it;
- the dialect's begin / commit / rollback do nothing: Django's ``atomic`` owns the transaction (garrison
  wraps its statements in a savepoint so a failed write leaves the app's transaction usable);
- each cursor loads ``jsonb`` and ``timestamptz`` the way garrison expects. Django's connection loads
  ``jsonb`` as text and ``timestamptz`` in its own time zone, and those loaders are per cursor here, so
  Django's own queries are unaffected.

PostgreSQL with psycopg 3 only (Django's ``postgresql`` backend on psycopg 3).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

__all__ = ["borrowed_engine"]

_DIALECT = "garrison_django"


class BorrowedDialect(PGDialect_psycopg):
    """psycopg 3, on a connection whose transaction belongs to someone else."""

    supports_statement_cache = True

    def do_begin(self, dbapi_connection: Any) -> None:
        return None

    def do_commit(self, dbapi_connection: Any) -> None:
        return None

    def do_rollback(self, dbapi_connection: Any) -> None:
        return None

    def on_connect(self) -> None:  # type: ignore[override]
        # The stock hook adds a notice handler to the connection on every checkout; a lent connection
        # would collect one per ingest.
        return None


class LendingPool(NullPool):
    """Hands out the current thread's Django connection; giving it back leaves it open."""

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        return None

    def dispose(self) -> None:
        return None


registry.register(f"postgresql.{_DIALECT}", __name__, "BorrowedDialect")


def borrowed_engine(alias: str) -> Engine:
    """An engine whose every connection is Django's connection ``alias`` of the calling thread."""
    from django.db import connections  # type: ignore[import-untyped]

    def lend() -> Any:
        wrapper = connections[alias]
        wrapper.ensure_connection()
        return wrapper.connection

    engine = create_engine(
        f"postgresql+{_DIALECT}://",
        creator=lend,
        poolclass=LendingPool,
        pool_reset_on_return=None,
        use_native_hstore=False,
    )
    event.listen(engine, "before_cursor_execute", _garrison_loaders)
    return engine


def _garrison_loaders(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    from psycopg.types.datetime import TimestamptzLoader
    from psycopg.types.json import JsonbLoader

    cursor.adapters.register_loader("jsonb", JsonbLoader)
    cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
