"""One engine batch in memory: the messages of some keys applied to their entities, in order.

The engine (:mod:`garrison.core.engine`) reads the rows and writes the result; this module decides, for
each message, which entities apply it and what they write. Per entity ``(automation, key)``:

- ``active``: it has considered every message up to its key's cursor; it applies the new ones it takes.
- ``behind``: messages after its own ``cursor`` still wait for it. A worker that lacks the automation
  marks it so when a message meant for it (by the route the fleet registered) arrives; a worker that has
  it catches it up from the log, in order, before it takes new messages.
- ``halted``: a message failed under ``on_failure="halt"``; the entity waits at that message.

An atomic batch (``ingest_many(..., atomic=True)``) is one unit: an entity applies all its messages or,
when one raises, none of them.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from garrison.core import instrument
from garrison.core.contract import ApplyContext, Automation, Message, Outcome, Route, check_outcome
from garrison.core.jsondata import JSON
from garrison.core.registry import Registry
from garrison.logs import log_context

log = logging.getLogger("garrison.engine")

ACTIVE, BEHIND, HALTED = "active", "behind", "halted"


@dataclass(slots=True)
class Slot:
    """An entity as the batch sees it."""

    state: JSON
    version: int
    cursor: int
    status: str = ACTIVE
    dirty: bool = False


@dataclass(frozen=True, slots=True)
class Unit:
    """What applies as one: a message, or every message of an atomic batch (consecutive, one key)."""

    key: str
    messages: tuple[Message, ...]
    data: tuple[Any, ...]

    @property
    def first(self) -> int:
        return self.messages[0].seq

    @property
    def last(self) -> int:
        return self.messages[-1].seq


def units_of(rows: Sequence[tuple[Message, Any, int | None, int | None]]) -> tuple[list[Unit], set[str]]:
    """Group rows ``(message, raw data, batch_id, batch_size)`` of one key's contiguous run into units.
    An atomic batch cut short by the read's limit is left out, with its key returned as unfinished."""
    units: list[Unit] = []
    cut: set[str] = set()
    i = 0
    while i < len(rows):
        message, data, batch_id, size = rows[i]
        if batch_id is None or not size or size <= 1:
            units.append(Unit(message.key, (message,), (data,)))
            i += 1
            continue
        j = i
        while j < len(rows) and rows[j][0].key == message.key and rows[j][2] == batch_id:
            j += 1
        if j - i < size:
            cut.add(message.key)  # the rest of the batch is past the limit: next round
        else:
            units.append(Unit(message.key, tuple(r[0] for r in rows[i:j]), tuple(r[1] for r in rows[i:j])))
        i = j
    return units, cut


@dataclass(slots=True)
class Written:
    """Rows the batch will write, collected as it goes."""

    versions: list[dict[str, Any]] = field(default_factory=list)
    effects: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[tuple[str, str, Outcome]] = field(default_factory=list)
    applied: int = 0
    changed: int = 0
    failed: int = 0

    @property
    def derived_only(self) -> bool:
        """Whether all the batch writes can be derived again from the event log: states, versions and
        cursors, nothing that leads outside (an effect, a timer, an emitted event, a journey run) and no
        failure an operator may act on."""
        return not self.effects and not self.failures and not any(
            o.timers or o.cancel_timers or o.emits or o.runs for _, _, o in self.outcomes
        )


class Batch:
    """Applies units to the slots of one batch. ``remote``: automations of the fleet this process does
    not have, with their routes; ``context(message, version)`` builds a handler's :class:`ApplyContext`."""

    def __init__(
        self,
        tenant: str,
        now: datetime,
        registry: Registry,
        remote: Sequence[tuple[str, Route]],
        slots: dict[tuple[str, str], Slot],
        cursors: dict[str, int],
        context: Callable[[Message, int], ApplyContext],
        max_nesting: int = 64,
    ) -> None:
        self.tenant = tenant
        self.now = now
        self.registry = registry
        self.remote = remote
        self.slots = slots
        self.start = dict(cursors)  # each key's cursor before this batch
        self.cursors = dict(cursors)  # and after the units applied so far
        self.context = context
        self.max_nesting = max_nesting
        self.out = Written()
        # Behind entities by key: those this process catches up, and the automations it lacks they wait for.
        self._behind: dict[str, list[tuple[str, Slot]]] = {}
        self._waiting: dict[str, set[str]] = {}
        remote_names = {name for name, _ in remote}
        for (name, key), slot in slots.items():
            if slot.status == BEHIND and name in registry:
                self._behind.setdefault(key, []).append((name, slot))
            elif slot.status == BEHIND and name in remote_names:
                self._waiting.setdefault(key, set()).add(name)

    def apply(self, unit: Unit) -> None:
        new = unit.first > self.start[unit.key]
        takers: dict[str, Automation] = {}
        for message in unit.messages:
            for automation in self.registry.route(message):
                takers.setdefault(automation.name, automation)
        self._catch_up_others(unit, set(takers))
        for automation in takers.values():
            slot = self.slots.get((automation.name, unit.key))
            if slot is None:
                if not new:
                    continue  # an old message, and no entity of this automation was waiting for it
                slot = self.slots[(automation.name, unit.key)] = Slot(None, 0, 0)
            if slot.status == HALTED:
                continue
            # A behind entity takes the unit that follows its own cursor (an earlier one it has applied, a
            # later one must wait for the gap a cut read left); an active one takes new units only.
            if (slot.status == BEHIND and unit.first != slot.cursor + 1) or (slot.status == ACTIVE and not new):
                continue
            self._apply(automation, slot, unit)
        if new:
            for name, route in self.remote:
                if any(route.takes(name, m) for m in unit.messages):
                    self._hold(name, unit)
            self.cursors[unit.key] = unit.last

    def _catch_up_others(self, unit: Unit, takers: set[str]) -> None:
        """Behind entities of this key that do not take the unit have considered it all the same."""
        for name, slot in self._behind.get(unit.key, ()):
            if slot.status == BEHIND and slot.cursor + 1 == unit.first and name not in takers:
                slot.cursor, slot.dirty = unit.last, True

    def _hold(self, automation: str, unit: Unit) -> None:
        """A message meant for an automation this process does not have: its entity waits for a worker
        that has it (the message stays in the log; nothing of it is applied here)."""
        slot = self.slots.get((automation, unit.key))
        if slot is None:
            slot = self.slots[(automation, unit.key)] = Slot(None, 0, unit.first - 1, BEHIND, dirty=True)
        elif slot.status == ACTIVE:
            slot.status, slot.cursor, slot.dirty = BEHIND, unit.first - 1, True
        if slot.status == BEHIND:
            self._waiting.setdefault(unit.key, set()).add(automation)

    def _apply(self, automation: Automation, slot: Slot, unit: Unit) -> None:
        state, version = slot.state, slot.version
        outcomes: list[tuple[Message, Any, Outcome]] = []
        for message, data in zip(unit.messages, unit.data, strict=True):
            if not automation.accepts(message):
                continue
            self.out.applied += 1
            try:
                with log_context(automation=automation.name, key=unit.key, event_id=message.event_id), \
                        instrument.current().applying(message, automation.name):
                    outcome = automation.apply(state, message, self.context(message, version))
                    check_outcome(outcome, self.max_nesting)  # what it returns must be storable, too
            except Exception as exc:  # noqa: BLE001 - a handler's error is data (guarantee 7)
                self._failed(automation, slot, unit, message, exc)
                return
            if outcome.changed:
                version += 1
                state = outcome.state
            outcomes.append((message, data, outcome))
        if not outcomes:
            if slot.status == BEHIND:
                slot.cursor, slot.dirty = unit.last, True
            return
        self._commit(automation, slot, unit, outcomes)

    def _commit(
        self, automation: Automation, slot: Slot, unit: Unit, outcomes: list[tuple[Message, Any, Outcome]]
    ) -> None:
        touched = slot.version > 0 or slot.status == BEHIND
        for message, data, outcome in outcomes:
            if outcome.changed:
                self.out.changed += 1
                slot.version += 1
                slot.state = outcome.state
                self.out.versions.append({
                    "tenant": self.tenant, "key": unit.key, "automation": automation.name,
                    "version": slot.version, "state": outcome.state, "message": outcome.label, "data": data,
                    "event_id": message.event_id, "seq": message.seq, "created_at": self.now,
                })
            for spec in outcome.effects:
                self.out.effects.append({
                    "tenant": self.tenant, "automation": automation.name, "key": unit.key, "kind": spec.kind,
                    "payload": {**spec.payload, "version": slot.version}, "status": "pending", "attempts": 0,
                    "created_at": self.now,
                })
            self.out.outcomes.append((automation.name, unit.key, outcome))
            touched = touched or outcome.changed or bool(outcome.effects)
        if touched:
            # A new entity is written only when a message did something to it: a journey that sees every
            # event of a key it never ran for leaves no row behind.
            slot.cursor, slot.dirty = unit.last, True

    def _failed(self, automation: Automation, slot: Slot, unit: Unit, message: Message, exc: Exception) -> None:
        self.out.failed += 1
        whole = ""
        if len(unit.messages) > 1:
            whole = (f" (message {unit.messages.index(message) + 1} of an atomic batch of {len(unit.messages)}: "
                     "none of it applied)")
        log.warning(
            "handler failed",
            extra={"tenant": self.tenant, "automation": automation.name, "key": unit.key,
                   "event_id": message.event_id, "error": repr(exc)},
        )
        halt = automation.on_failure == "halt"
        first = unit.messages[0]
        self.out.failures.append({
            "tenant": self.tenant, "automation": automation.name, "key": unit.key, "event_id": first.event_id,
            "seq": first.seq, "message": first.name, "error_type": type(exc).__name__,
            "error": (str(exc) or repr(exc)) + whole, "traceback": traceback.format_exc(),
            "status": "failed", "created_at": self.now,
        })
        if halt:
            slot.status, slot.cursor, slot.dirty = HALTED, unit.first - 1, True
        elif slot.version > 0 or slot.status == BEHIND:
            slot.cursor, slot.dirty = unit.last, True

    def settle(self) -> None:
        """Behind entities of this process's automations that have caught up with their key are active."""
        for key, behind in self._behind.items():
            for _, slot in behind:
                if slot.status == BEHIND and slot.cursor >= self.cursors.get(key, 0):
                    slot.status, slot.dirty = ACTIVE, True

    def catching_up(self, key: str) -> bool:
        """Whether an entity of ``key`` this process has is still behind (a cut read: another round)."""
        return any(slot.status == BEHIND for _, slot in self._behind.get(key, ()))

    def needs(self, key: str) -> str | None:
        """An automation this process lacks whose entity of ``key`` waits (the first by name), if any."""
        waiting = self._waiting.get(key)
        return min(waiting) if waiting else None
