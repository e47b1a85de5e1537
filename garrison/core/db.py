"""The SQL connection: one place that knows PostgreSQL from SQLite.

On SQLite every writing transaction starts with ``BEGIN IMMEDIATE``: it takes the database's write lock
up front, which serializes writers (so the per-key lock is the whole database there) and avoids the
deadlock-prone upgrade from a read lock. A read-only session (``session(readonly=True)``: state,
inspect, stats, runs, follow) starts a deferred ``BEGIN`` instead and never asks for the write lock, so
with WAL it reads the last commit while an engine batch holds the lock, instead of waiting behind it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
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
from garrison.models import TENANTS, metadata

UPSERT_CHUNK = 500
_NEW_TENANTS = "garrison_new_tenants"
READONLY = "garrison_readonly"  # the execution option that marks a read-only session's connection


class Database:
    """A SQLAlchemy engine plus the few dialect-specific statements garrison needs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.engine = _create_engine(settings)
        self.dialect = self.engine.dialect.name
        # Tenants known to be in garrison_tenants (committed), so an ingest writes the row only once.
        self._tenants: set[str] = set()
        # The same engine, marked so that a transaction begun on it is a deferred (read) one on SQLite.
        self._reader = self.engine.execution_options(**{READONLY: True})

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def create_all(self) -> None:
        """Create every garrison table that does not exist yet (``garrison db init``)."""
        metadata.create_all(self.engine)
        self._tenants.clear()

    def drop_all(self) -> None:
        """Drop every garrison table, and the migration history with them (so ``garrison db upgrade``
        afterwards starts from an empty database rather than trusting a revision whose tables are gone)."""
        metadata.drop_all(self.engine)
        self._tenants.clear()
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS garrison_alembic_version")

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, rolled back otherwise.

        ``readonly=True`` is for reads only: on SQLite its transaction is deferred (no write lock, so it
        never waits behind a writer, and a write in it fails); elsewhere it is an ordinary transaction.
        A database that cannot be reached, or that drops the connection (a restart), raises
        :class:`~garrison.errors.DatabaseUnavailable` instead of the driver's error."""
        bind = self._reader if readonly else self.engine
        try:
            with Session(bind, expire_on_commit=False) as session:
                with session.begin():
                    yield session
                self._tenants.update(session.info.get(_NEW_TENANTS, ()))
        except DBAPIError as exc:
            if not unavailable(exc):
                raise
            shown = make_url(self.url).render_as_string(hide_password=True)
            raise DatabaseUnavailable(f"the database is unavailable: {_first_line(exc.orig)}",
                                      database=shown) from exc

    def ensure_tenant(self, session: Session, tenant: str, now: datetime) -> None:
        """Record ``tenant`` in ``garrison_tenants`` the first time this process writes for it: the relay,
        the timer sweep and the beat loop over that small table. On PostgreSQL in a transaction of its own,
        committed at once, so two first writes of a new tenant never wait for each other's transaction
        (a tenant row whose events roll back is harmless); on SQLite, whose writers are serialized anyway,
        in the session's."""
        if tenant in self._tenants:
            return
        row = self.upsert(TENANTS, [{"name": tenant, "created_at": now}], ["name"])
        if self.is_sqlite:
            session.execute(row)
            session.info.setdefault(_NEW_TENANTS, set()).add(tenant)
            return
        with self.engine.begin() as conn:
            conn.execute(row)
        self._tenants.add(tenant)

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


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def explain(exc: BaseException, url: str) -> str | None:
    """One line a person can act on for a database error that is about the setup rather than garrison:
    tables not created yet, a database that does not exist, a server that cannot be reached. None for
    anything else (then the error itself is the best description)."""
    if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__  # the driver's error says what is wrong
    cause = getattr(exc, "orig", None) or exc
    text = str(cause)
    where = safe_url(url)
    if "no such table" in text or type(cause).__name__ == "UndefinedTable" or re.search(
            r'relation "garrison_\w+" does not exist', text):
        return (f"garrison's tables are not in {where} yet: run `garrison db upgrade` (on every deploy, "
                "before the workers start)")
    missing = re.search(r'database "([^"]+)" does not exist', text)
    if missing:
        return (f"the database {missing.group(1)!r} does not exist ({where}): create it, e.g. "
                f"`createdb {missing.group(1)}`, or point GARRISON_DATABASE_URL at one that does, then run "
                "`garrison db upgrade`")
    if "password authentication failed" in text:
        return f"the database refused the user and password of {where}: check GARRISON_DATABASE_URL"
    if any(s in text for s in ("Connection refused", "could not connect", "connection failed", "timeout expired",
                               "could not translate host name", "unable to open database file")):
        first = next((line.strip() for line in text.splitlines() if line.strip()), text)
        return f"cannot reach the database at {where}: {first}"
    return None
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
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READONLY) else "BEGIN IMMEDIATE")
