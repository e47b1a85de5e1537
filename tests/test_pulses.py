"""Pulse fan-out (issue 4's core, driven directly: the beat scheduler that opens slots comes next).
Against the real database, both backends: every entity at most once per slot, duplicates harmless."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.models import ENTITIES, EVENTS, PULSE_SLOTS
from garrison.pulses.fanout import fan_out_chunk, open_slot, save_schedule
from garrison.pulses.schedules import PulseSchedule
from tests.test_examples import load
from tests.test_timers import analyze

T0 = datetime(2025, 1, 1, 12, 1, tzinfo=UTC)

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def offline(settings_for: Callable[..., Settings], backend: str, **kwargs: object) -> Garrison:
    settings = settings_for(backend, **kwargs)
    return Garrison(settings, publisher=NullPublisher(), clock=FrozenClock(START))


def run_slot(client: Garrison, slot_id: int, chunk: int) -> int:
    """Fan a slot out page by page; returns the number of pages."""
    pages = 0
    while fan_out_chunk(client.db, client.settings.tenant, slot_id, client.clock.now(), chunk) is not None:
        pages += 1
    return pages


def test_a_pulse_reaches_every_entity_once_even_when_pages_and_slots_are_repeated(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    client = offline(settings_for, backend)
    tenant = client.settings.tenant
    client.ingest_many({"name": "add", "key": f"k{n:05d}", "target": "counter"} for n in range(2_500))
    analyze(client)
    client.run_pending(effects=False)  # the counter's listener effects are not the point
    schedule_id = save_schedule(client.db, tenant, PulseSchedule("tick", "counter", "add", every="1m"), START)
    slot = START + timedelta(minutes=1)
    assert isinstance(client.clock, FrozenClock)
    client.clock.advance(61)
    opened = open_slot(client.db, tenant, schedule_id, slot, client.clock.now())
    assert opened is not None and opened.status == "running"
    assert open_slot(client.db, tenant, schedule_id, slot, client.clock.now()) is None  # a second beat
    first = fan_out_chunk(client.db, tenant, opened.id, client.clock.now(), 400)
    assert first is not None and len(first) == 400
    client.ingest_many(  # a page's events sent again (a duplicated task's insert): all refused as duplicates
        {"name": "add", "key": e.key, "target": "counter", "data": e.data, "idempotency_key": e.idempotency_key}
        for e in first
    )
    assert run_slot(client, opened.id, 400) == 6  # the rest: 2,100 entities in pages of 400, the last short
    assert fan_out_chunk(client.db, tenant, opened.id, client.clock.now(), 400) is None  # a late duplicate
    client.run_pending(effects=False)  # the counter's listener effects are not the point

    with client.db.session() as s:
        states = s.execute(select(ENTITIES.c.state).where(ENTITIES.c.tenant == tenant,
                                                          ENTITIES.c.automation == "counter")).scalars().all()
    assert len(states) == 2_500 and {state["count"] for state in states} == {2}  # created once, pulsed once
    with client.db.session() as s:
        pulses = s.execute(
            select(func.count()).where(EVENTS.c.tenant == tenant, EVENTS.c.idempotency_key.like("garrison/pulse:%"))
        ).scalar_one()
        row = s.execute(select(PULSE_SLOTS).where(PULSE_SLOTS.c.id == opened.id)).one()
    assert pulses == 2_500
    assert (row.status, row.total, row.done) == ("done", 2_500, 2_500)
    assert client.state("counter", "k00007")["applied"][-1] == ["", 0]


def test_a_pulse_skips_entities_created_after_its_slot_and_those_its_filter_excludes(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    client = offline(settings_for, backend)
    tenant = client.settings.tenant
    example = load("support_inquiry")
    client.register(example.inquiry)
    example.OUTBOX.clear()
    start = START.timestamp()
    for key, name in (("1", "ryan"), ("2", "ana"), ("3", "ivy")):
        example.inquiry.send("initialInquiry", key, {"name": name, "when": start}, client=client)
    example.inquiry.send("respond", "2", {}, client=client)
    client.run_pending()
    spec = PulseSchedule("timeouts", "inquiry", "checkTimeout", cron="* * * * * */5", where={"status": ["inquired"]})
    schedule_id = save_schedule(client.db, tenant, spec, START)
    assert isinstance(client.clock, FrozenClock)
    client.clock.advance(30)
    slot = START + timedelta(seconds=20)
    example.inquiry.send("initialInquiry", "4", {"name": "late", "when": start + 30}, client=client)  # after the slot
    client.run_pending()
    opened = open_slot(client.db, tenant, schedule_id, slot, client.clock.now())
    assert opened is not None
    run_slot(client, opened.id, 2)
    client.run_pending()
    states = {k: client.state("inquiry", k)["status"] for k in "1234"}
    # Timed out after 10 s (the example's timeoutAfter): ryan and ivy; ana responded; "late" came after the slot.
    assert states == {"1": "timeout", "2": "responded", "3": "timeout", "4": "inquired"}
    assert sorted(example.OUTBOX) == [("bob@help.com", "The person ivy has not responded"),
                                      ("bob@help.com", "The person ryan has not responded")]


def test_a_slot_due_while_the_previous_one_runs_is_skipped_and_recorded(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    client = offline(settings_for, backend)
    tenant = client.settings.tenant
    client.ingest_many({"name": "add", "key": f"k{n}", "target": "counter"} for n in range(10))
    client.run_pending()
    schedule_id = save_schedule(client.db, tenant, PulseSchedule("tick", "counter", "add", every="1s"), START)
    now = START + timedelta(seconds=5)
    first = open_slot(client.db, tenant, schedule_id, START + timedelta(seconds=1), now)
    second = open_slot(client.db, tenant, schedule_id, START + timedelta(seconds=2), now)
    assert first is not None and first.status == "running"
    assert second is not None and second.status == "skipped"
    assert second.reason is not None and "still running" in second.reason
    assert fan_out_chunk(client.db, tenant, second.id, now) is None  # a skipped slot sends nothing
    run_slot(client, first.id, 100)
    third = open_slot(client.db, tenant, schedule_id, START + timedelta(seconds=3), now)
    assert third is not None and third.status == "running"


def test_a_pulse_key_is_the_same_whichever_path_wrote_it_even_for_keys_too_long_to_embed(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    """PostgreSQL writes a page in one server-side statement that computes the idempotency key in SQL;
    it must be exactly pulse_key(), including the sha256 form for keys too long to embed."""
    from garrison.pulses.fanout import pulse_key

    client = offline(settings_for, backend)
    tenant = client.settings.tenant
    keys = ["short", "é" * 10, "x" * 250, "ü" * 240]
    client.ingest_many({"name": "add", "key": k, "target": "counter"} for k in keys)
    client.run_pending(effects=False)
    schedule_id = save_schedule(client.db, tenant, PulseSchedule("tick", "counter", "add", every="1m"), START)
    slot = START + timedelta(minutes=1)
    assert isinstance(client.clock, FrozenClock)
    client.clock.advance(61)
    opened = open_slot(client.db, tenant, schedule_id, slot, client.clock.now())
    assert opened is not None
    written = fan_out_chunk(client.db, tenant, opened.id, client.clock.now(), 10)
    assert written is not None and sorted(e.key for e in written) == sorted(keys)
    with client.db.session() as s:
        stored = dict(s.execute(select(EVENTS.c.key, EVENTS.c.idempotency_key).where(
            EVENTS.c.tenant == tenant, EVENTS.c.idempotency_key.like("garrison/pulse:%"))).all())
    assert stored == {k: pulse_key(schedule_id, slot, k) for k in keys}
    assert all(len(v) <= 255 for v in stored.values()) and "sha256:" in stored["x" * 250]
    assert fan_out_chunk(client.db, tenant, opened.id, client.clock.now(), 10) is None  # the slot is done


WHERE_STATES: dict[str, Any] = {
    "open": {"status": "inquired"},
    "closed": {"status": "timeout"},
    "number": {"status": 1},
    "missing": {"other": "inquired"},
    "null": {"status": None},
    "true": {"status": True},
    "one-as-bool": {"status": 1, "flag": True},
    "nested": {"status": "inquired", "meta": {"tier": "gold"}},
    "nested-list": {"status": "inquired", "meta": ["gold"]},
    "list": {"status": ["inquired"]},
    "scalar-state": "inquired",
}
WHERES: list[dict[str, Any]] = [
    {"status": ["inquired"]},
    {"status": "inquired"},
    {"status": ["inquired", None]},
    {"status": [True]},
    {"status": ["inquired"], "meta.tier": "gold"},
    {"flag": True},
    {"status": [1]},  # numbers: filtered in Python (jsonb says 1 = 1.0; the filter does not)
    {"meta.0": "gold"},  # a digit path part: Python (jsonb would read it as an index)
]


def test_a_pulse_filter_selects_exactly_what_state_matches_selects_whichever_side_evaluates_it(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    """On PostgreSQL a filter of strings, booleans and nulls runs inside the page's statement; the
    entities it reaches must be exactly those ``state_matches`` accepts, type for type."""
    from garrison.pulses.fanout import sql_filter
    from garrison.pulses.schedules import state_matches

    client = offline(settings_for, backend)
    tenant = client.settings.tenant
    with client.db.session() as s:
        s.execute(ENTITIES.insert(), [
            {"tenant": tenant, "key": key, "automation": "counter", "state": state, "version": 1, "cursor": 0,
             "created_at": START, "updated_at": START}
            for key, state in WHERE_STATES.items()
        ])
    assert isinstance(client.clock, FrozenClock)
    client.clock.advance(61)
    for n, where in enumerate(WHERES):
        name = f"w{n}"
        schedule_id = save_schedule(
            client.db, tenant, PulseSchedule(name, "counter", "add", every="1m", where=where), START
        )
        opened = open_slot(client.db, tenant, schedule_id, START + timedelta(minutes=1), client.clock.now())
        assert opened is not None
        reached: list[str] = []
        while (page := fan_out_chunk(client.db, tenant, opened.id, client.clock.now(), 4)) is not None:
            reached += [e.key for e in page]
        expected = sorted(k for k, state in WHERE_STATES.items() if state_matches(state, where))
        assert sorted(reached) == expected, where
    assert sql_filter(WHERES[0]) is not None and sql_filter(WHERES[4]) is not None
    assert sql_filter(WHERES[6]) is None and sql_filter(WHERES[7]) is None


def test_an_entity_whose_batch_started_before_the_slot_and_committed_after_a_page_passed_it_is_still_pulsed(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    """The race at the slot boundary, step by step: an entity's ``created_at`` is its engine batch's start.
    A batch that started a second before the slot commits only after the first page went past its key;
    the pages never come back to it, the last pass over entities created just before the slot does."""
    from sqlalchemy import insert

    client = Garrison(settings_for(backend, automations=()), publisher=NullPublisher(), clock=FrozenClock(T0))
    tenant = client.settings.tenant
    def entity(key: str, created: datetime) -> dict[str, Any]:
        return {"tenant": tenant, "key": key, "automation": "inquiry", "state": {"status": "open"}, "version": 1,
                "cursor": 1, "created_at": created, "updated_at": created}

    with client.db.session() as s:
        s.execute(insert(ENTITIES), [entity(f"e{i:02}", T0 - timedelta(hours=1)) for i in range(10)])
    spec = PulseSchedule(name="timeouts", automation="inquiry", message="checkTimeout", every=timedelta(minutes=1))
    schedule_id = save_schedule(client.db, tenant, spec, T0 - timedelta(minutes=5))
    opened = open_slot(client.db, tenant, schedule_id, T0, T0)
    assert opened is not None
    first = fan_out_chunk(client.db, tenant, opened.id, T0, chunk=4)
    assert first is not None and [e.key for e in first] == ["e00", "e01", "e02", "e03"]
    with client.db.session() as s:  # the late batch commits now, with the time its batch started
        s.execute(insert(ENTITIES), [entity("e01-late", T0 - timedelta(seconds=1)),
                                     entity("e99-after", T0 + timedelta(seconds=1))])
    while fan_out_chunk(client.db, tenant, opened.id, T0, chunk=4) is not None:
        pass
    with client.db.session() as s:
        sent = dict(s.execute(
            select(EVENTS.c.key, func.count()).where(EVENTS.c.tenant == tenant, EVENTS.c.name == "checkTimeout")
            .group_by(EVENTS.c.key)
        ).all())
    assert sent == {**{f"e{i:02}": 1 for i in range(10)}, "e01-late": 1}  # each once; none created after the slot
    client.db.dispose()
