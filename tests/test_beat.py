"""The pulse beat on a frozen clock, against the real database (both backends): schedules read from SQL
each tick, one leader among several beats, missed-slot policies, code-defined pulses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from garrison import FrozenClock, Garrison, Machine, NullPublisher, Settings
from garrison.errors import DefinitionError
from garrison.models import PULSE_SLOTS, SCHEDULES
from garrison.pulses.beat import PulseBeat
from garrison.pulses.fanout import run_pulse, save_schedule
from garrison.pulses.schedules import PulseSchedule

START = datetime(2025, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)


class RecordingPublisher(NullPublisher):
    """Keeps the pulse tasks beat would have sent (the broker is not what these tests are about)."""

    def __init__(self) -> None:
        self.pulses: list[tuple[str, int, str]] = []

    def publish_pulse(self, tenant: str, slot_id: int, label: str) -> None:
        self.pulses.append((tenant, slot_id, label))

    def publish_keys(self, tenant: str, keys: Sequence[str]) -> None:
        return None


def beat_client(
    settings_for: Callable[..., Settings], backend: str, clock: FrozenClock
) -> tuple[Garrison, RecordingPublisher]:
    publisher = RecordingPublisher()
    client = Garrison(settings_for(backend), publisher=publisher, clock=clock)
    return client, publisher


def slots(client: Garrison) -> list[tuple[str, datetime, str]]:
    with client.db.session() as s:
        rows = s.execute(select(PULSE_SLOTS.c.schedule, PULSE_SLOTS.c.slot, PULSE_SLOTS.c.status)
                         .where(PULSE_SLOTS.c.tenant == client.settings.tenant).order_by(PULSE_SLOTS.c.slot)).all()
    return [(r.schedule, r.slot.replace(tzinfo=UTC) if r.slot.tzinfo is None else r.slot.astimezone(UTC), r.status)
            for r in rows]


def test_a_schedule_added_at_run_time_fires_on_the_next_tick_and_a_paused_one_does_not(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    clock = FrozenClock(START)
    client, publisher = beat_client(settings_for, backend, clock)
    client.ingest_many({"name": "add", "key": f"k{n}", "target": "counter"} for n in range(5))
    client.run_pending(effects=False)
    beat = PulseBeat(client, owner="a")
    assert beat.tick().leader and publisher.pulses == []
    save_schedule(client.db, client.settings.tenant, PulseSchedule("tick", "counter", "add", every="1s"), clock.now())
    paused_id = save_schedule(client.db, client.settings.tenant,
                              PulseSchedule("quiet", "counter", "add", every="1s"), clock.now())
    with client.db.session() as s:
        s.execute(SCHEDULES.update().where(SCHEDULES.c.id == paused_id).values(paused=True))
    clock.advance(1)
    report = beat.tick()
    assert [(name, slot) for _, name, slot in report.opened] == [("tick", datetime(2025, 1, 1, 12, 0, 1, tzinfo=UTC))]
    [(tenant, slot_id, label)] = publisher.pulses
    assert label == "tick@2025-01-01T12:00:01+00:00"
    assert run_pulse(client, tenant, slot_id, chunk=2) == 5
    client.run_pending(effects=False)
    assert {client.state("counter", f"k{n}")["count"] for n in range(5)} == {2}
    assert beat.tick().opened == []  # nothing new is due in the same second


def test_one_of_two_beats_fires_each_slot_once_and_the_other_takes_over_when_it_dies(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    clock = FrozenClock(START)
    client, publisher = beat_client(settings_for, backend, clock)
    save_schedule(client.db, client.settings.tenant,
                  PulseSchedule("tick", "counter", "add", every="1s", missed="all", overlap="allow"), clock.now())
    first, second = PulseBeat(client, owner="first", ttl=3), PulseBeat(client, owner="second", ttl=3)
    leaders = []
    for _ in range(10):
        clock.advance(1)
        a, b = first.tick(), second.tick()
        leaders.append((a.leader, b.leader))
    assert leaders == [(True, False)] * 10
    # The first beat dies (stops ticking). The second takes over once the lease expires, and fires the
    # slots of the gap (missed="all") and the ones after it; nothing twice, nothing lost.
    for _ in range(10):
        clock.advance(1)
        second.tick()
    fired = [slot for name, slot, _ in slots(client)]
    assert fired == [START.replace(microsecond=0) + timedelta(seconds=n) for n in range(1, 21)]
    assert len({slot_id for _, slot_id, _ in publisher.pulses}) == len(publisher.pulses) == 20


def test_pulses_defined_in_code_are_synced_for_the_tenants_that_have_entities(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    machine = Machine("lamp")

    @machine.pulse("every 2s")
    def check(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
        return {"checked": data["now"]}

    machine.pulse("0 9 * * 1-5", "check", name="lamp.mornings", timezone="Europe/Paris")
    with pytest.raises(DefinitionError, match="unknown timezone"):
        machine.pulse("0 9 * * *", "check", name="bad", timezone="Europe/Atlantis")
    clock = FrozenClock(START)
    publisher = RecordingPublisher()
    client = Garrison(settings_for(backend, automations=()), automations=[machine], publisher=publisher, clock=clock)
    machine.send("check", "l1", {"now": 0}, client=client, tenant="acme")
    client.run_pending("acme")
    PulseBeat(client, owner="a").tick()
    with client.db.session() as s:
        rows = s.execute(select(SCHEDULES.c.tenant, SCHEDULES.c.name, SCHEDULES.c.source)
                         .order_by(SCHEDULES.c.tenant, SCHEDULES.c.name)).all()
    assert [tuple(r) for r in rows] == [
        ("acme", "lamp.check", "code"), ("acme", "lamp.mornings", "code"),
        ("default", "lamp.check", "code"), ("default", "lamp.mornings", "code"),
    ]


def test_a_lease_has_one_holder_until_it_expires_and_changes_hands_with_a_new_epoch(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    from garrison.core.leases import acquire, holder, release

    db = Garrison(settings_for(backend), publisher=NullPublisher()).db
    t0 = START
    a = acquire(db, "_fleet", "beat", "a", 10, t0)
    assert a is not None and (a.owner, a.epoch) == ("a", 1)
    assert acquire(db, "_fleet", "beat", "b", 10, t0 + timedelta(seconds=5)) is None  # held
    renewed = acquire(db, "_fleet", "beat", "a", 10, t0 + timedelta(seconds=9))
    assert renewed is not None and renewed.epoch == 1 and renewed.expires_at == t0 + timedelta(seconds=19)
    assert acquire(db, "_fleet", "beat", "b", 10, t0 + timedelta(seconds=18)) is None  # still renewed
    b = acquire(db, "_fleet", "beat", "b", 10, t0 + timedelta(seconds=19))  # expired: taken over
    assert b is not None and (b.owner, b.epoch) == ("b", 2)
    assert acquire(db, "_fleet", "beat", "a", 10, t0 + timedelta(seconds=20)) is None  # the deposed one
    assert not release(db, "_fleet", "beat", "a")
    assert release(db, "_fleet", "beat", "b")
    assert holder(db, "_fleet", "beat") is None
    c = acquire(db, "_fleet", "beat", "a", 10, t0 + timedelta(seconds=21))
    assert c is not None and c.epoch == 3  # never reused: a stale holder of epoch 1 stays fenced off
    assert acquire(db, "other-tenant", "beat", "z", 10, t0) is not None  # leases are per tenant
