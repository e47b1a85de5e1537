"""Pulses on real processes: `celery beat` with garrison's scheduler and real workers, both backends.

Exactly-once is read from what was committed: one pulse event per (schedule, slot, entity) (their
idempotency keys) and the counter's state, which counts every message applied to it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select, update

from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.leases import holder
from garrison.models import ENTITIES, EVENTS, PULSE_SLOTS, SCHEDULES
from garrison.pulses.fanout import save_schedule
from garrison.pulses.schedules import PulseSchedule
from garrison.tasks.publisher import CeleryPublisher
from tests.conftest import wait_until
from tests.harness import WorkerProcess, start_beat
from tests.test_timers import analyze

Worker = Callable[..., WorkerProcess]


def slot_rows(client: Garrison) -> list[tuple[int, str, int, int | None]]:
    with client.db.session() as s:
        rows = s.execute(select(PULSE_SLOTS.c.id, PULSE_SLOTS.c.status, PULSE_SLOTS.c.done, PULSE_SLOTS.c.total)
                         .where(PULSE_SLOTS.c.tenant == client.settings.tenant).order_by(PULSE_SLOTS.c.slot)).all()
    return [(r.id, r.status, r.done, r.total) for r in rows]


def pulse_events_per_key(client: Garrison) -> dict[str, int]:
    with client.db.session() as s:
        rows = s.execute(select(EVENTS.c.key, func.count())
                         .where(EVENTS.c.tenant == client.settings.tenant,
                                EVENTS.c.idempotency_key.like("garrison/pulse:%"))
                         .group_by(EVENTS.c.key)).all()
    return {key: n for key, n in rows}


def counts(client: Garrison, automation: str = "counter") -> dict[str, int]:
    with client.db.session() as s:
        rows = s.execute(select(ENTITIES.c.key, ENTITIES.c.state).where(
            ENTITIES.c.tenant == client.settings.tenant, ENTITIES.c.automation == automation)).all()
    return {r.key: r.state["count"] for r in rows}


def make_counters(client: Garrison, n: int, automation: str = "counter") -> None:
    for start in range(0, n, 2_000):
        client.ingest_many({"name": "add", "key": f"k{i:05d}", "target": automation}
                           for i in range(start, min(n, start + 2_000)))
    analyze(client)


def test_a_schedule_added_at_run_time_fires_without_a_restart_and_stops_when_paused(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend)
    client = Garrison(settings)
    worker(settings, beat=True)
    make_counters(client, 20)
    wait_until(lambda: len(counts(client)) == 20, what="20 counters")
    save_schedule(client.db, settings.tenant, PulseSchedule("tick", "counter", "add", every="1s"), client.clock.now())
    wait_until(lambda: sum(1 for _, status, _, _ in slot_rows(client) if status == "done") >= 2, timeout=30,
               what="two pulse slots done")
    with client.db.session() as s:
        s.execute(update(SCHEDULES).where(SCHEDULES.c.tenant == settings.tenant).values(paused=True))
    time.sleep(1.5)  # a tick that had read the schedule before the pause may still open one slot
    fired = len(slot_rows(client))
    wait_until(lambda: all(status == "done" for _, status, _, _ in slot_rows(client)), timeout=30,
               what="the slots to finish")
    time.sleep(3)
    assert len(slot_rows(client)) == fired  # paused: no slot after it
    wait_until(lambda: set(counts(client).values()) == {1 + fired}, timeout=30, what="every pulse applied")
    assert set(pulse_events_per_key(client).values()) == {fired}  # once per slot per entity


def test_two_beats_fire_each_slot_once_and_the_survivor_takes_over_when_the_leader_is_killed(
    settings_for: Callable[..., Settings], backend: str, worker: Worker, tmp_path: Path
) -> None:
    settings = settings_for(backend, beat_lease_ttl=3.0)
    client = Garrison(settings)
    worker(settings)  # no embedded beat: the two below are the only ones
    make_counters(client, 10)
    wait_until(lambda: len(counts(client)) == 10, what="10 counters")
    beats = [start_beat(settings, tmp_path / f"beat{i}.log") for i in range(2)]
    save_schedule(client.db, settings.tenant,
                  PulseSchedule("tick", "counter", "add", every="1s", missed="all", overlap="allow"),
                  client.clock.now())
    wait_until(lambda: len(slot_rows(client)) >= 10, timeout=30, what="ten slots")
    lease = holder(client.db, "_fleet", "beat")
    assert lease is not None
    leader = next(b for b in beats if f":{b.proc.pid}:" in lease.owner)
    leader.kill()
    before = len(slot_rows(client))
    wait_until(lambda: len(slot_rows(client)) >= before + 5, timeout=30, what="the survivor to fire slots")
    taken = holder(client.db, "_fleet", "beat")
    assert taken is not None and taken.owner != lease.owner
    for b in beats:
        b.kill()
    rows = slot_rows(client)
    wait_until(lambda: all(status == "done" for _, status, _, _ in slot_rows(client)), timeout=30,
               what="every slot to finish")
    with client.db.session() as s:
        instants = [r[0] for r in s.execute(select(PULSE_SLOTS.c.slot).where(
            PULSE_SLOTS.c.tenant == settings.tenant).order_by(PULSE_SLOTS.c.slot))]
    seconds = [round((b - a).total_seconds()) for a, b in itertools.pairwise(instants)]
    assert set(seconds) == {1}  # consecutive slots, none missing (missed="all" across the takeover)
    wait_until(lambda: set(counts(client).values()) == {1 + len(rows)}, timeout=30, what="every pulse applied")
    assert set(pulse_events_per_key(client).values()) == {len(rows)}


def test_a_pulse_over_ten_thousand_entities_applies_once_each_despite_a_duplicate_task_and_a_killed_worker(
    settings_for: Callable[..., Settings], backend: str, worker: Worker
) -> None:
    settings = settings_for(backend, pulse_chunk=100, automations=("tests.apps.tally",))
    client = Garrison(settings)
    first = worker(settings)
    make_counters(client, 10_000, "tally")
    wait_until(lambda: len(counts(client, "tally")) == 10_000, timeout=120, interval=1, what="10,000 counters")
    analyze(client)
    schedule_id = save_schedule(client.db, settings.tenant, PulseSchedule("once", "tally", "add", cron="0 0 1 1 *"),
                                client.clock.now())
    from garrison.pulses.fanout import open_slot

    opened = open_slot(client.db, settings.tenant, schedule_id, client.clock.now(), client.clock.now())
    assert opened is not None
    publisher = CeleryPublisher(settings)
    publisher.publish_pulse(settings.tenant, opened.id, "once")
    publisher.publish_pulse(settings.tenant, opened.id, "once (duplicate)")
    try:
        wait_until(lambda: 0 < slot_rows(client)[0][2] < 10_000, timeout=60, interval=0.05, what="the pulse to start")
    except AssertionError as exc:  # say where it stood, and what the worker said
        raise AssertionError(f"{exc}; slot {slot_rows(client)}; worker log:\n{first.output()[-4000:]}") from None
    first.kill()  # mid-pulse
    assert slot_rows(client)[0][1] == "running"
    worker(settings, beat=True)  # its relay re-publishes the stalled slot
    wait_until(lambda: slot_rows(client)[0][1] == "done", timeout=120, interval=0.5, what="the pulse to finish")
    wait_until(lambda: set(counts(client, "tally").values()) == {2}, timeout=120, interval=1,
               what="every pulse applied")
    per_key = pulse_events_per_key(client)
    assert len(per_key) == 10_000 and set(per_key.values()) == {1}
    assert slot_rows(client)[0][2:] == (10_000, 10_000)


def test_caserns_machine_times_out_silent_inquiries_and_emails_support_once_each(
    settings_for: Callable[..., Settings], backend: str, worker: Worker, tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=("tests.apps.inquiry",))
    client = Garrison(settings)
    mailbox = tmp_path / "mailbox.jsonl"
    worker(settings, beat=True, env={"GARRISON_TEST_MAILBOX": str(mailbox)})
    from tests.apps.inquiry import inquiry

    now = time.time()
    for key, name in (("1", "ryan"), ("2", "ana"), ("3", "ivy")):
        inquiry.send("initialInquiry", key, {"name": name, "when": now}, client=client)
    inquiry.send("respond", "2", {}, client=client)

    def statuses() -> dict[str, str]:
        return {k: (client.state("inquiry", k) or {}).get("status", "") for k in "123"}

    wait_until(lambda: statuses() == {"1": "timeout", "2": "responded", "3": "timeout"}, timeout=60,
               what="the silent inquiries to time out")
    wait_until(lambda: mailbox.exists() and len(mailbox.read_text().splitlines()) >= 2, timeout=30,
               what="the emails")
    time.sleep(2)  # more pulses come; no more emails may
    emails = [json.loads(line) for line in mailbox.read_text().splitlines()]
    assert sorted(e["text"] for e in emails) == ["The person ivy has not responded",
                                                 "The person ryan has not responded"]
    assert len({e["idempotency_key"] for e in emails}) == 2


def test_a_running_pulse_reports_its_progress_as_task_events_for_flower(
    settings_for: Callable[..., Settings], worker: Worker
) -> None:
    import contextlib
    import threading
    from typing import Any

    from garrison.pulses.fanout import open_slot
    from garrison.tasks.app import create_celery

    settings = settings_for("postgres", pulse_chunk=100, automations=("tests.apps.tally",))
    client = Garrison(settings)
    app = create_celery(settings)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"task-progress": seen.append})
            ready.set()
            with contextlib.suppress(TimeoutError):
                receiver.capture(limit=None, timeout=30, wakeup=True)

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    worker(settings)
    make_counters(client, 450, "tally")
    wait_until(lambda: len(counts(client, "tally")) == 450, what="450 tallies")
    schedule_id = save_schedule(client.db, settings.tenant, PulseSchedule("once", "tally", "add", cron="0 0 1 1 *"),
                                client.clock.now())
    opened = open_slot(client.db, settings.tenant, schedule_id, client.clock.now(), client.clock.now())
    assert opened is not None
    CeleryPublisher(settings).publish_pulse(settings.tenant, opened.id, "once")
    wait_until(lambda: any(e.get("done") == 450 for e in seen), timeout=30, what="the last progress event")
    assert [e["done"] for e in seen] == [100, 200, 300, 400, 450] and {e["total"] for e in seen} == {450}
