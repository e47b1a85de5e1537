"""The SQL connection: one place that knows PostgreSQL from SQLite.

On SQLite every transaction starts with ``BEGIN IMMEDIATE``: it takes the database's write lock up
front, which serializes writers (so the per-key lock is the whole database there) and avoids the
deadlock-prone upgrade from a read lock. WAL lets readers go on meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from garrison.config import Settings
from garrison.errors import DatabaseUnavailable
from garrison.models import metadata

UPSERT_CHUNK = 500


class Database:
    """A SQLAlchemy engine plus the few dialect-specific statements garrison needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.engine = _create_engine(settings)
        self.dialect = self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def create_all(self) -> None:
        """Create every garrison table that does not exist yet (``garrison db init``)."""
        metadata.create_all(self.engine)

    def drop_all(self) -> None:
        """Drop every garrison table, and the migration history with them (so ``garrison db upgrade``
        afterwards starts from an empty database rather than trusting a revision whose tables are gone)."""
        metadata.drop_all(self.engine)
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS garrison_alembic_version")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, rolled back otherwise.

        A database that cannot be reached, or that drops the connection (a restart), raises
        :class:`~garrison.errors.DatabaseUnavailable` instead of the driver's error."""
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except DBAPIError as exc:
            if not unavailable(exc):
                raise
            shown = make_url(self.url).render_as_string(hide_password=True)
            raise DatabaseUnavailable(f"the database is unavailable: {_first_line(exc.orig)}",
                                      database=shown) from exc

    def upsert(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]],
        index: Sequence[str],
        update: dict[str, Any] | None = None,
    ) -> Any:
        """``INSERT .. ON CONFLICT (index) DO UPDATE SET update`` (or ``DO NOTHING`` without update)."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(table).values(list(rows))
        if update is None:
            return stmt.on_conflict_do_nothing(index_elements=list(index))
        values = {k: (v(stmt.excluded) if callable(v) else v) for k, v in update.items()}
        return stmt.on_conflict_do_update(index_elements=list(index), set_=values)

    def execute_upsert(
        self,
        session: Session,
        table: Table,
        rows: Sequence[dict[str, Any]],
        index: Sequence[str],
        update: dict[str, Any] | None = None,
        returning: Sequence[Any] = (),
    ) -> list[Any]:
        """Run :meth:`upsert` in chunks that stay under SQLite's and PostgreSQL's bound-parameter limits."""
        out: list[Any] = []
        for start in range(0, len(rows), UPSERT_CHUNK):
            stmt = self.upsert(table, rows[start : start + UPSERT_CHUNK], index, update)
            if returning:
                out.extend(session.execute(stmt.returning(*returning)).all())
            else:
                session.execute(stmt)
        return out

    def dispose(self) -> None:
        self.engine.dispose()


# SQLSTATE classes of a lost or refused connection: 08 (connection exception), 57P01-57P03 (the server is
# shutting down, crashed, or not accepting connections yet).
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03")
_SQLITE_CANTOPEN = 14


def unavailable(exc: DBAPIError) -> bool:
    """Whether a driver error means the database is out of reach (not that a statement was wrong)."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    if state:
        return any(state.startswith(s) for s in _UNAVAILABLE_STATES)
    if getattr(orig, "sqlite_errorcode", None) is not None:
        return bool(orig.sqlite_errorcode == _SQLITE_CANTOPEN)  # type: ignore[union-attr]
    # psycopg raises OperationalError with no SQLSTATE when it cannot connect at all.
    return type(orig).__name__ == "OperationalError" and type(orig).__module__.startswith("psycopg")


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


def _create_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # NullPool: SQLite connections are cheap, and a pooled one must never cross a fork.
        engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"timeout": settings.sqlite_busy_timeout, "check_same_thread": False},
        )
        _configure_sqlite(engine, settings)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _configure_sqlite(engine: Engine, settings: Settings) -> None:
    busy_ms = int(settings.sqlite_busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
