"""Replay and determinism checks: rebuild state from the log with every side effect skipped.

- ``replay``: for each entity, re-apply the messages it took (sequence order, up to its cursor), skipping
  effects, and report any key whose replayed state differs from the stored one. It starts from an empty
  state when the key's whole log is kept; once retention (:mod:`garrison.core.retention`) has deleted the
  oldest events, from the oldest kept state version that every later event is kept for (a snapshot), so
  what replay covers is the kept part of the log: the events of the retention window, applied to the
  state they found.
- ``check``: casern's time travel: re-apply each stored version's message to the previous version's
  state and report any version a reducer no longer reproduces (a non-deterministic reducer). Versions
  whose message or predecessor retention deleted have nothing to be re-derived from and are passed over.

Both read only; neither runs a listener, a command or any other effect.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from garrison.core.contract import ApplyContext, Automation, Lookup, Message
from garrison.core.db import Database
from garrison.core.engine import EVENT_COLUMNS, lookup_in, to_message
from garrison.core.jsondata import clone_json, json_equal
from garrison.core.registry import Registry
from garrison.models import ENTITIES, EVENTS, VERSIONS


@dataclass(frozen=True, slots=True)
class Mismatch:
    automation: str
    key: str
    stored: Any
    replayed: Any
    version: int | None = None


@dataclass(slots=True)
class ReplayReport:
    entities: int = 0
    events: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    # Automations not rebuilt because their state may change outside the log (``replayable = False``).
    skipped: list[str] = field(default_factory=list)
    # Entities rebuilt from a kept state version, their oldest events having been deleted by retention.
    from_snapshots: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches


_message = to_message


def replay(
    db: Database, registry: Registry, tenant: str, automation: str | None = None, key: str | None = None,
    page: int = 500,
) -> ReplayReport:
    """Rebuild entities (one key, one automation, or all) and compare with what is stored."""
    report = ReplayReport()
    automations = [registry.get(automation)] if automation else list(registry)
    for auto in automations:
        if not auto.replayable:
            report.skipped.append(auto.name)
            continue
        after = ""
        while True:
            with db.session(readonly=True) as s:
                query = select(ENTITIES.c.key, ENTITIES.c.state, ENTITIES.c.cursor).where(
                    ENTITIES.c.tenant == tenant, ENTITIES.c.automation == auto.name, ENTITIES.c.key > after
                )
                if key is not None:
                    query = query.where(ENTITIES.c.key == key)
                entities = s.execute(query.order_by(ENTITIES.c.key).limit(page)).all()
                for ent in entities:
                    events = s.execute(
                        select(*EVENT_COLUMNS)
                        .where(EVENTS.c.tenant == tenant, EVENTS.c.key == ent.key, EVENTS.c.seq <= ent.cursor)
                        .order_by(EVENTS.c.seq)
                    ).all()
                    start = _snapshot(s, tenant, auto.name, ent.key, _kept_from(events, ent.cursor))
                    if start is not None:
                        report.from_snapshots += 1
                        events = [e for e in events if e.seq > start.seq]
                    replayed, applied = _rebuild(auto, tenant, ent.key, events, start)
                    report.entities += 1
                    report.events += applied
                    if not json_equal(replayed, ent.state):
                        report.mismatches.append(Mismatch(auto.name, ent.key, ent.state, replayed))
            if len(entities) < page or key is not None:
                break
            after = entities[-1].key
    return report


def _list_lookup(messages: list[Message]) -> Lookup:
    """A :data:`Lookup` over a key's log already in memory."""

    def lookup(name: str | None, after: int, before: int) -> list[Message]:
        return [
            m for m in messages
            if after < m.seq < before and m.target is None
            and (name is None or m.name == name or fnmatch.fnmatchcase(m.name, name))
        ]

    return lookup


def _kept_from(events: Any, cursor: int) -> int:
    """The first seq of the unbroken run of kept events that ends at ``cursor`` (``cursor + 1``: none)."""
    first = cursor + 1
    for row in reversed(events):
        if row.seq != first - 1:
            break
        first = row.seq
    return first


def _snapshot(s: Any, tenant: str, automation: str, key: str, kept_from: int) -> Any:
    """Where a replay starts: None (the empty state) when the key's log is kept from its first event; else
    the oldest version every later event is kept for, or the newest version (the events retention deleted
    after it changed nothing)."""
    if kept_from <= 1:
        return None
    entity = (VERSIONS.c.tenant == tenant, VERSIONS.c.automation == automation, VERSIONS.c.key == key)
    columns = (VERSIONS.c.version, VERSIONS.c.state, VERSIONS.c.seq)
    found = s.execute(select(*columns).where(*entity, VERSIONS.c.seq >= kept_from - 1)
                      .order_by(VERSIONS.c.version).limit(1)).first()
    if found is None:
        found = s.execute(select(*columns).where(*entity).order_by(VERSIONS.c.version.desc()).limit(1)).first()
    return found


def _rebuild(auto: Automation, tenant: str, key: str, events: Any, start: Any = None) -> tuple[Any, int]:
    state: Any = None if start is None else clone_json(start.state)
    version = 0 if start is None else start.version
    applied = 0
    messages = [_message(tenant, row) for row in events]
    lookup = _list_lookup(messages)
    for message in messages:
        if not auto.accepts(message):
            continue
        applied += 1
        ctx = ApplyContext(
            tenant=tenant, key=key, now=message.created_at, version=version, replay=True, lookup=lookup
        )
        try:
            outcome = auto.apply(state, message, ctx)
        except Exception:  # noqa: BLE001 - it failed when processed too; the failure is recorded there
            continue
        if outcome.changed:
            state = outcome.state
            version += 1
    return state, applied


def check(db: Database, registry: Registry, tenant: str, automation: str, key: str) -> list[Mismatch]:
    """Re-derive every stored version from the one before it and its message."""
    auto = registry.get(automation)
    with db.session(readonly=True) as s:
        versions = s.execute(
            select(VERSIONS.c.version, VERSIONS.c.state, VERSIONS.c.event_id)
            .where(VERSIONS.c.tenant == tenant, VERSIONS.c.automation == automation, VERSIONS.c.key == key)
            .order_by(VERSIONS.c.version)
        ).all()
        ids = [v.event_id for v in versions if v.event_id is not None]
        events = {
            row.id: row
            for row in s.execute(select(*EVENT_COLUMNS).where(EVENTS.c.tenant == tenant, EVENTS.c.id.in_(ids)))
        }
    mismatches: list[Mismatch] = []
    prev: Any = None
    if versions and versions[0].version > 1:  # retention deleted the ones before: start from the first kept
        prev = versions[0].state
        versions = versions[1:]
    with db.session(readonly=True) as s:
        lookup = lookup_in(s, tenant, key)
        for v in versions:
            prev = _check_one(auto, tenant, key, v, events.get(v.event_id), prev, lookup, mismatches)
    return mismatches


def _check_one(
    auto: Automation, tenant: str, key: str, v: Any, row: Any, prev: Any, lookup: Lookup,
    mismatches: list[Mismatch],
) -> Any:
    """Re-apply one version's message to the previous state; record a mismatch. Returns the stored state."""
    if row is None:
        # No event: retention deleted it (nothing to re-derive from), or a version written outside the log
        # (a node's set); a replayable automation's version without one is a mismatch.
        if v.event_id is None and auto.replayable:
            mismatches.append(Mismatch(auto.name, key, v.state, None, version=v.version))
        return v.state
    message = _message(tenant, row)
    ctx = ApplyContext(
        tenant=tenant, key=key, now=message.created_at, version=v.version - 1, replay=True, lookup=lookup
    )
    try:
        redone: Any = auto.apply(prev, message, ctx).state
    except Exception as exc:  # noqa: BLE001 - reported as a mismatch, not raised
        redone = {"error": f"{type(exc).__name__}: {exc}"}
    if not json_equal(redone, v.state):
        mismatches.append(Mismatch(auto.name, key, v.state, redone, version=v.version))
    return v.state
