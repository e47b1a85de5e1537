"""Node state outside the worker: committed reads, the atomic ``set``, and ingesting broadcasts and sends.

``set`` is one transaction that takes the node's per-key lock, the very lock the engine takes before it
applies a message to that key (the cursor row: ``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite
``BEGIN IMMEDIATE`` serializes every writer). So a set never interleaves with another set or with a
handler of that node in a worker: no update is lost (guarantee 3). It writes the entity row with the
version incremented and a state version labelled ``set`` (``garrison inspect NODE`` shows both).

Reads of committed state are read-only sessions: on SQLite a deferred transaction that never asks for
the write lock, so a view in a handler does not wait for the very transaction that runs the handler (WAL
lets it see the last commit while a writer works).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, bindparam, insert, select, update
from sqlmodel import Session

from garrison.automations.nodes.events import (
    ID_NAMESPACE,
    Delivery,
    NodeEvent,
    NodeSnapshot,
    NodeSpec,
    Selector,
    SystemSpec,
    Views,
    call_setter,
    check_payload,
    check_type,
)
from garrison.automations.nodes.events import select as select_path
from garrison.core import feed
from garrison.core.db import Database
from garrison.core.ingest import check_idempotency_key
from garrison.core.jsondata import JSON, clone_json, json_equal
from garrison.core.namespace import reserved
from garrison.core.runtime import Runtime, default_client
from garrison.models import CURSORS, ENTITIES, VERSIONS

__all__ = ["NodeState", "deliver", "read_committed", "set_state", "views_for"]


def _client(client: Runtime | None) -> Runtime:
    return client or default_client()


class NodeState:
    """A node's state from outside the worker (``node.state``). Each call takes ``client=`` (default: the
    process-wide client) and ``tenant=`` (default: the settings' tenant)."""

    def __init__(self, node: NodeSpec) -> None:
        self.node = node

    def get(self, selector: Selector = None, *, client: Runtime | None = None, tenant: str | None = None) -> Any:
        """The committed state through ``selector`` (a callable, a dotted path, or None for all of it)."""
        return select_path(self.snapshot(client=client, tenant=tenant).state, selector)

    def snapshot(self, *, client: Runtime | None = None, tenant: str | None = None) -> NodeSnapshot:
        """The committed state and its version (0 and the initial state when none is stored)."""
        c = _client(client)
        found = read_committed(c.db, c.tenant_of(tenant), self.node.system.name, [self.node.name])
        state, version = found.get(self.node.name, (self.node.initial_state(), 0))
        return NodeSnapshot(self.node.name, state, version)

    def set(
        self, fn: Callable[..., Any] | Mapping[str, Any], *, client: Runtime | None = None, tenant: str | None = None
    ) -> NodeSnapshot:
        """Apply ``fn(state)`` or ``fn(state, views)`` atomically and store the result as the next version;
        a dict is the new state itself (it replaces the whole state). A result equal to the current state
        stores nothing. Returns what is committed."""
        c = _client(client)
        return set_state(c, self.node, fn, c.tenant_of(tenant))


def read_committed(db: Database, tenant: str, system: str, names: Sequence[str]) -> dict[str, tuple[JSON, int]]:
    """``{node: (state, version)}`` for the nodes of ``names`` that have a stored state. A read-only
    session: on SQLite it never waits for the write lock, not even the one the engine holds while it runs
    the very handler that reads."""
    if not names:
        return {}
    with db.session(readonly=True) as s:
        return _read_in(s, tenant, system, names)


def _read_in(s: Session, tenant: str, system: str, names: Sequence[str]) -> dict[str, tuple[JSON, int]]:
    return {r.key: (r.state, r.version) for r in s.execute(_stored(tenant, system, names))}


def _stored(tenant: str, system: str, names: Sequence[str]) -> Select[tuple[str, Any, int]]:
    # version > 0: an entity row written only to move its cursor holds no state of its own yet.
    return select(ENTITIES.c.key, ENTITIES.c.state, ENTITIES.c.version).where(
        ENTITIES.c.tenant == tenant, ENTITIES.c.automation == system, ENTITIES.c.key.in_(sorted(set(names))),
        ENTITIES.c.version > 0,
    )


def views_for(node: NodeSpec, client: Runtime | None, tenant: str | None) -> Views:
    c = _client(client)
    t = c.tenant_of(tenant)
    return Views(node.system, node.name, lambda names: read_committed(c.db, t, node.system.name, names))


# Built once: a set is a hot path (a counter set from many processes), and building statements costs more
# than running them on a fast database.
_LOCK = (
    select(CURSORS.c.processed_seq)
    .where(CURSORS.c.tenant == bindparam("t"), CURSORS.c.key == bindparam("k"))
    .with_for_update()
)
_ENTITY = (ENTITIES.c.tenant == bindparam("t"), ENTITIES.c.automation == bindparam("a"),
           ENTITIES.c.key == bindparam("k"))
_READ = select(ENTITIES.c.state, ENTITIES.c.version).where(*_ENTITY)
_UPDATE = update(ENTITIES).where(*_ENTITY).values(
    state=bindparam("s"), version=bindparam("v"), updated_at=bindparam("now"))


def set_state(client: Runtime, node: NodeSpec, fn: Callable[..., Any] | Mapping[str, Any], tenant: str) -> NodeSnapshot:
    """The atomic set: lock the node's key, read, apply ``fn``, write state, version + 1 and a version row."""
    db, system, key = client.db, node.system.name, node.name
    now = client.clock.now()
    at = {"t": tenant, "a": system, "k": key}
    with db.session() as s:
        # The per-key lock the engine takes before applying messages to this key (guarantee 3). The entity
        # is read by a separate statement once the lock is granted: on PostgreSQL a join locked "FOR UPDATE
        # OF cursors" re-checks only the locked row after a wait and hands back the entity as it was before
        # the wait, losing the update the previous holder just committed.
        processed = s.execute(_LOCK, at).scalar()
        if processed is None:  # a key nothing was ever sent to: create its cursor row (the lock) first
            db.execute_upsert(s, CURSORS, [{"tenant": tenant, "key": key, "processed_seq": 0, "updated_at": now}],
                              ["tenant", "key"])
            processed = s.execute(_LOCK, at).scalar_one()
        row = s.execute(_READ, at).first()
        stored = row is not None and row.version > 0  # a version-0 row only ever moved its cursor
        current, version = (row.state, row.version) if stored and row is not None else (node.initial_state(), 0)
        # Views read through this transaction: on PostgreSQL each statement sees what is committed; on
        # SQLite nothing else commits while this transaction holds the write lock.
        views = Views(node.system, key, lambda names: _read_in(s, tenant, system, names))
        new = call_setter(fn, clone_json(current), views, key)
        if json_equal(new, current):
            return NodeSnapshot(key, current, version)
        version += 1
        if row is None:
            s.execute(insert(ENTITIES).values(
                tenant=tenant, key=key, automation=system, state=new, version=version, cursor=processed,
                created_at=now, updated_at=now,
            ))
        else:
            s.execute(_UPDATE, {**at, "s": new, "v": version, "now": now})
        txid = (feed.txid_expression(tenant, key, system, version) if db.dialect == "postgresql"
                else feed.sqlite_txid(s, tenant))
        s.execute(insert(VERSIONS).values(
            tenant=tenant, key=key, automation=system, version=version, state=new, message="set", data=None,
            event_id=None, seq=None, created_at=now, txid=txid,
        ))
        feed.notify(s, db, tenant)
    return NodeSnapshot(key, new, version)


def deliver(
    system: SystemSpec,
    node: str | None,
    type: str,
    payload: JSON,
    client: Runtime | None,
    tenant: str | None,
    idempotency_key: str | None,
) -> Delivery:
    """Ingest a fresh event (a new correlation) for one node (``node``) or every subscriber (None), all
    copies in one transaction. With ``idempotency_key`` the event id is derived from it, so a repeated
    call stores nothing new."""
    c = _client(client)
    t = c.tenant_of(tenant)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        event_id = str(uuid.uuid5(ID_NAMESPACE, f"{t}:{system.name}:given:{idempotency_key}"))
    else:
        event_id = str(uuid.uuid4())
    event = NodeEvent(
        type=check_type(type), payload=check_payload(payload), id=event_id, correlation_id=event_id,
        timestamp=c.clock.now(),
    )
    if node is None:
        nodes = system.subscribers(event)
    else:
        system.check_receiver(node, event)
        nodes = (node,)
    if nodes:
        c.ingest_many([
            {"name": event.type, "key": n, "data": event.to_data(), "tenant": t, "target": system.name,
             "idempotency_key": reserved("node", event.id, n)}
            for n in nodes
        ])
    return Delivery(event, nodes)
