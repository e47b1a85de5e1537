"""The change feed: every stored state version, in an order a reader can resume from without missing or
repeating one (``client.follow``, ``garrison follow``, ``GET /follow``).

Why not "id > last": a global counter is handed out before commit, so a transaction that took 41 and
commits after the one that took 42 is skipped forever by a reader that already passed 42 (guarantee 2).
Each version row carries ``txid`` instead:

- PostgreSQL: the id of the transaction that wrote it (``pg_current_xact_id()``), raised to the ``txid``
  of the entity's previous version when that is higher (so an entity's versions are in version order). A
  reader takes only rows with ``txid`` below its snapshot's ``xmin``: every transaction with a lower id has
  ended, so no row can ever appear behind what it has read. A long-running writing transaction (anywhere
  on the server) holds the feed back until it ends; it never makes it skip.
- SQLite: writers are serialized by the database's write lock, so a counter per tenant bumped by each
  writing transaction (``max + 1``, read under that lock) is commit order itself.

The feed is ordered by ``(txid, key, automation, version)``; a :data:`cursor <Change.cursor>` is that
position, opaque to users. Writers wake PostgreSQL readers with ``NOTIFY garrison_versions`` (payload: the
tenant); SQLite readers poll.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, ColumnElement, Text, and_, cast, func, select, text, tuple_
from sqlalchemy.orm import aliased

from garrison.clock import as_utc
from garrison.core.db import Database
from garrison.errors import CursorExpired, ValidationError
from garrison.models import RETENTION, VERSIONS, StateVersion

__all__ = [
    "CHANNEL", "Change", "Follow", "Position", "decode", "encode", "notify", "read_changes", "sqlite_txid",
    "tail", "txid_expression",
]

CHANNEL = "garrison_versions"
VERSIONS_RULE = "versions"  # retention's rule name for state versions (garrison.core.retention)


class Position(NamedTuple):
    """A place in the feed: after every version at or before ``(txid, key, automation, version)``; with
    ``key`` None, after every version of ``txid`` or lower."""

    txid: int
    key: str | None = None
    automation: str = ""
    version: int = 0


def encode(position: Position) -> str:
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, field: str = "since") -> Position:
    """A cursor back to its position; a :class:`ValidationError` naming ``field`` when it is not one."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        txid, key, automation, version = raw
        if not (isinstance(txid, int) and (key is None or isinstance(key, str)) and isinstance(automation, str)
                and isinstance(version, int)):
            raise TypeError(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError(f"{cursor!r} is not a follow cursor (use one a change carried, or 'now')",
                              field=field) from exc
    return Position(txid, key, automation, version)


@dataclass(frozen=True, slots=True)
class Change:
    """One stored transition: ``prev`` (None for an entity's first version, or one retention deleted) to
    ``current``, what produced it (``message``, the event's ``data``, ``event_id``, ``seq``; a node's
    ``set`` has no event) and ``cursor``, to resume after it."""

    tenant: str
    automation: str
    key: str
    version: int
    prev: Any
    current: Any
    message: str
    data: Any
    event_id: int | None
    seq: int | None
    created_at: datetime
    cursor: str

    def to_json(self) -> dict[str, Any]:
        """The change as JSON-ready data (``created_at`` as ISO 8601 text)."""
        return {"tenant": self.tenant, "automation": self.automation, "key": self.key, "version": self.version,
                "prev": self.prev, "current": self.current, "message": self.message, "data": self.data,
                "event_id": self.event_id, "seq": self.seq, "created_at": self.created_at.isoformat(),
                "cursor": self.cursor}


# -- the writers' side ------------------------------------------------------------------------------------


def txid_expression(tenant: str, key: str, automation: str, version: int) -> ColumnElement[int]:
    """PostgreSQL: the ``txid`` of a version being inserted (this transaction's id, at least the entity's
    previous version's ``txid``)."""
    older = aliased(StateVersion.__table__)  # type: ignore[attr-defined]
    previous = (
        select(older.c.txid)
        .where(older.c.tenant == tenant, older.c.key == key, older.c.automation == automation,
               older.c.version < version)
        .order_by(older.c.version.desc()).limit(1).scalar_subquery()
    )
    return func.greatest(_current_txid(), previous)


def sqlite_txid(session: Any, tenant: str) -> int:
    """SQLite: the ``txid`` of the versions this transaction writes (it holds the write lock: no other
    writer can take the same number, and a reader never sees a lower one appear later)."""
    found = session.execute(select(func.max(VERSIONS.c.txid)).where(VERSIONS.c.tenant == tenant)).scalar()
    return int(found or 0) + 1


def notify(session: Any, db: Database, tenant: str) -> None:
    """Wake the tenant's PostgreSQL readers when this transaction commits (NOTIFY is transactional)."""
    if db.dialect == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :tenant)"), {"channel": CHANNEL, "tenant": tenant})


def _current_txid() -> ColumnElement[int]:
    return cast(cast(func.pg_current_xact_id(), Text), BigInteger)


def _stable_below() -> ColumnElement[int]:
    """The lowest id a transaction still running may have: every ``txid`` below it is final."""
    return cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)


# -- the readers' side ------------------------------------------------------------------------------------


def read_changes(
    db: Database, tenant: str, after: Position | None, *, automation: str | None = None, limit: int = 100,
) -> list[Change]:
    """Up to ``limit`` changes after ``after`` (None: from the oldest kept), in feed order."""
    v = VERSIONS
    prev = aliased(StateVersion.__table__)  # type: ignore[attr-defined]
    query = (
        select(v.c.key, v.c.automation, v.c.version, v.c.state, v.c.message, v.c.data, v.c.event_id, v.c.seq,
               v.c.created_at, v.c.txid, prev.c.state.label("prev"))
        .outerjoin(prev, and_(prev.c.tenant == v.c.tenant, prev.c.key == v.c.key,
                              prev.c.automation == v.c.automation, prev.c.version == v.c.version - 1))
        .where(v.c.tenant == tenant)
        .order_by(v.c.txid, v.c.key, v.c.automation, v.c.version)
        .limit(limit)
    )
    if after is not None:
        if after.key is None:
            query = query.where(v.c.txid > after.txid)
        else:
            query = query.where(
                v.c.txid >= after.txid,  # what the (tenant, txid) index finds; the row comparison decides
                tuple_(v.c.txid, v.c.key, v.c.automation, v.c.version)
                > tuple_(after.txid, after.key, after.automation, after.version),
            )
    if automation is not None:
        query = query.where(v.c.automation == automation)
    if db.dialect == "postgresql":
        query = query.where(v.c.txid < _stable_below())
    with db.session(readonly=True) as s:
        rows = s.execute(query).all()
    return [
        Change(tenant=tenant, automation=r.automation, key=r.key, version=r.version, prev=r.prev, current=r.state,
               message=r.message, data=r.data, event_id=r.event_id, seq=r.seq, created_at=as_utc(r.created_at),
               cursor=encode(Position(int(r.txid), r.key, r.automation, r.version)))
        for r in rows
    ]


def tail(db: Database, tenant: str) -> Position:
    """The position after every version committed now: ``since="now"`` follows only later changes."""
    with db.session(readonly=True) as s:
        if db.dialect == "postgresql":
            return Position(int(s.execute(select(_stable_below())).scalar_one()) - 1)
        return Position(int(s.execute(select(func.coalesce(func.max(VERSIONS.c.txid), 0))
                                      .where(VERSIONS.c.tenant == tenant)).scalar_one()))


def committed_txid(db: Database, tenant: str) -> int:
    """The highest ``txid`` of the tenant's committed versions (0: none)."""
    with db.session(readonly=True) as s:
        found = s.execute(select(func.max(VERSIONS.c.txid)).where(VERSIONS.c.tenant == tenant)).scalar()
    return int(found or 0)


def check_expired(db: Database, tenant: str, after: Position) -> None:
    """Raise :class:`CursorExpired` when retention deleted versions a reader at ``after`` had not seen."""
    with db.session(readonly=True) as s:
        mark = s.execute(
            select(RETENTION.c.deleted_txid, RETENTION.c.deleted)
            .where(RETENTION.c.tenant == tenant, RETENTION.c.rule == VERSIONS_RULE)
        ).first()
    if mark is not None and mark.deleted and after.txid <= mark.deleted_txid:
        raise CursorExpired(
            "retention deleted state versions this cursor had not reached (older than "
            "GARRISON_RETENTION_VERSIONS_DAYS): read the entities' current state, then follow since='now'",
            tenant=tenant, field="since",
        )


class _Wake:
    """Waits for the next change: LISTEN/NOTIFY on PostgreSQL (a connection of its own, opened on first
    use and reopened after an error), a plain sleep on SQLite. Either way at most ``timeout`` seconds."""

    def __init__(self, db: Database, tenant: str) -> None:
        self.db = db
        self.tenant = tenant
        self._conn: Any = None

    def wait(self, timeout: float) -> None:
        if self.db.dialect != "postgresql":
            time.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            conn = self._listen()
            while (left := deadline - time.monotonic()) > 0:
                for note in conn.notifies(timeout=left, stop_after=1):
                    if note.payload == self.tenant:
                        return
        except Exception:  # noqa: BLE001 - a lost connection: poll instead until it is back
            self.close()
            time.sleep(max(deadline - time.monotonic(), 0))

    def _listen(self) -> Any:
        if self._conn is None:
            import psycopg

            url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute(f"LISTEN {CHANNEL}")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class Follow(Iterator[Change]):
    """The iterator ``client.follow()`` returns. ``cursor`` is where it stands: after the last change it
    gave (resume there with ``since=follow.cursor``). ``wait=False`` stops once caught up; ``idle_timeout``
    stops after that many seconds with nothing new. Close it (or use ``with``) to free its connection."""

    def __init__(
        self, db: Database, tenant: str, *, automation: str | None, since: str | None, wait: bool,
        idle_timeout: float | None, poll: float, page: int = 100,
    ) -> None:
        if idle_timeout is not None and idle_timeout < 0:
            raise ValidationError("idle_timeout must be >= 0", field="idle_timeout")
        self.db, self.tenant, self.automation = db, tenant, automation
        self.wait, self.idle_timeout, self.poll, self.page = wait, idle_timeout, poll, page
        self._given: Position | None = None  # after the last change handed out
        if since == "now":
            self._given = tail(db, tenant)
        elif since is not None:
            self._given = decode(since)
            check_expired(db, tenant, self._given)
        self._read = self._given  # after the last change read (handed out, or waiting in the buffer)
        self._buffer: deque[Change] = deque()
        self._wake = _Wake(db, tenant)
        # Caught up (for wait=False) means past every version committed when the feed was opened: on
        # PostgreSQL one may still be held back by an older transaction that has not ended; wait for it.
        self._until = committed_txid(db, tenant)

    # Set first, so that __del__ of a feed whose __init__ raised finds something to close.
    _wake: _Wake | None = None

    @property
    def cursor(self) -> str | None:
        """Resume here to get what comes after the last change given (None: from the oldest kept)."""
        return None if self._given is None else encode(self._given)

    def __iter__(self) -> Follow:
        return self

    def __next__(self) -> Change:
        if not self._buffer:
            self._buffer.extend(self._fetch(None))
            if not self._buffer:
                raise StopIteration
        change = self._buffer.popleft()
        self._given = decode(change.cursor)
        return change

    def next_batch(self, timeout: float | None = None) -> list[Change]:
        """The next changes (a page at most), waiting up to ``timeout`` seconds for one (None: as ``wait``
        and ``idle_timeout`` say); an empty list when none came. The cursor moves past all of them."""
        out = list(self._buffer) if self._buffer else self._fetch(timeout)
        self._buffer.clear()
        if out:
            self._given = decode(out[-1].cursor)
        return out

    def _fetch(self, timeout: float | None) -> list[Change]:
        budget = self.idle_timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        while True:
            found = read_changes(self.db, self.tenant, self._read, automation=self.automation, limit=self.page)
            if found:
                self._read = decode(found[-1].cursor)
                return found
            if not self.wait and timeout is None and self._caught_up():
                return []
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 and (self.wait or timeout is not None):
                return []
            assert self._wake is not None
            self._wake.wait(self.poll if left is None or left <= 0 else min(self.poll, left))

    def _caught_up(self) -> bool:
        return self._until == 0 or (self._read is not None and self._read.txid >= self._until)

    def close(self) -> None:
        if self._wake is not None:
            self._wake.close()

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
