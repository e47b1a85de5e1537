"""Guarantees 1-3 with real worker processes on both backends: nothing accepted is lost or applied twice when a
worker is SIGKILLed mid-batch or a published message is dropped after commit; per-key order holds when ingests
commit out of id order or race from many processes; a second ingest for a key waits for the first to commit."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from garrison.client import Garrison, IngestedEvent
from garrison.config import Settings
from garrison.core.ingest import EventIn, validate, write_events
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from garrison.models import ENTITIES, EVENTS, FAILURES, VERSIONS
from tests.apps.counter import counter
from tests.harness import WorkerProcess, wait_until


def event(client: Garrison, key: str, source: str, n: int) -> EventIn:
    return validate("add", key, {"source": source, "n": n}, tenant=client.settings.tenant, target="counter",
                    max_payload_bytes=client.settings.max_payload_bytes)


def total(client: Garrison, table: Any = VERSIONS) -> int:
    with client.db.session() as s:
        return int(s.execute(select(func.count()).select_from(table)).scalar_one())


def in_seq_order(client: Garrison, key: str) -> list[list[Any]]:
    """The (source, n) of a key's events in sequence order: the order they must apply in."""
    with client.db.session() as s:
        rows = s.execute(
            select(EVENTS.c.seq, EVENTS.c.data).where(EVENTS.c.tenant == client.settings.tenant, EVENTS.c.key == key)
            .order_by(EVENTS.c.seq)
        ).all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), f"{key}: sequence has gaps or duplicates"
    return [[r.data["source"], r.data["n"]] for r in rows]


def assert_applied_exactly_once_in_order(client: Garrison, expected: dict[str, list[list[Any]]]) -> None:
    """Each key's state saw exactly its events, once each, in sequence order; one version per event."""
    for key, pairs in expected.items():
        assert in_seq_order(client, key) == pairs
        state = client.state("counter", key)
        assert state is not None, f"{key} never applied"
        assert state["applied"] == pairs, f"{key}: applied {state['applied']} != {pairs}"
        assert state["count"] == len(pairs)
        with client.db.session() as s:
            versions = s.execute(
                select(VERSIONS.c.version, VERSIONS.c.seq).where(VERSIONS.c.key == key).order_by(VERSIONS.c.version)
            ).all()
        assert [tuple(v) for v in versions] == [(i, i) for i in range(1, len(pairs) + 1)]
    assert total(client, VERSIONS) == sum(map(len, expected.values()))
    assert total(client, FAILURES) == 0


# -- guarantee 1: nothing lost, nothing twice -------------------------------------------------------------------


def test_a_worker_sigkilled_mid_batch_loses_nothing_and_applies_nothing_twice(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    keys = [f"k{i:02d}" for i in range(20)]
    expected = {key: [[key, n] for n in range(1, 21)] for key in keys}
    for key in keys:  # one published task per key, 20 slow events each
        client.ingest_many([{"name": "add", "key": key, "data": {"source": key, "n": n}, "target": "counter"}
                            for n in range(1, 21)])
    assert total(client, EVENTS) == 400

    # 30 ms an event: about 6 s for the 400 on two processes, so the kill lands mid-way even on a busy machine.
    doomed = worker(settings, env={"GARRISON_TEST_SLOW_REDUCER": "0.03"})
    wait_until(lambda: total(client) >= 60, interval=0.02, what="the first worker to be under way")
    doomed.kill()
    committed = total(client)
    assert 0 < committed < 400, f"the kill was not mid-way: {committed} versions committed"

    worker(settings, beat=True)  # its relay finds the messages the dead worker took with it
    wait_until(lambda: total(client) >= 400, timeout=60, what="every event applied")
    time.sleep(1.0)  # a few more relay rounds: nothing may be applied again
    assert_applied_exactly_once_in_order(client, expected)
    assert client.engine.pending(settings.tenant, keys) == []


def test_messages_dropped_after_commit_are_delivered_by_the_relay_exactly_once(
    settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    dropper = Garrison(settings, publisher=NullPublisher())  # commits, then "dies" before publishing
    try:
        worker(settings)  # no beat: no relay
        expected: dict[str, list[list[Any]]] = {}
        for n in range(1, 7):
            for i in range(5):
                key = f"d{i}"
                counter.send("add", key, {"source": "d", "n": n}, client=dropper)
                expected.setdefault(key, []).append(["d", n])

        # Control: a worker without the relay never hears of these events.
        time.sleep(3.0)  # well past relay_after (1 s) and relay_interval (0.5 s)
        assert total(dropper, ENTITIES) == 0 and total(dropper, VERSIONS) == 0

        worker(settings, beat=True)
        wait_until(lambda: total(dropper) >= 30, timeout=30, what="the relay to deliver every event")
        assert_applied_exactly_once_in_order(dropper, expected)
    finally:
        dropper.db.dispose()


# -- guarantee 2: per-key order, whatever the commit order of ids -----------------------------------------------


def test_ingests_committed_out_of_id_order_are_each_applied_once_in_key_order(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    worker(settings)
    sqlite = client.db.is_sqlite
    b_events: list[IngestedEvent] = []
    b_done = threading.Event()

    def ingest_b() -> None:
        b_events.append(counter.send("add", "K", {"source": "b", "n": 1}, client=client))
        b_done.set()

    b = threading.Thread(target=ingest_b)
    with client.db.session() as s:  # transaction A stays open...
        [a_j] = write_events(s, client.db, [event(client, "J", "a", 1)], client.clock.now())
        b.start()
        if sqlite:
            # SQLite has one writer at a time: B (and the worker) wait for A's whole transaction.
            assert not b_done.wait(1.0)
        else:
            # ...while B takes a higher id, commits, and the worker applies it.
            assert b_done.wait(10)
            assert b_events[0].id > a_j.id
            wait_until(lambda: client.state("counter", "K"), what="B applied while A is open")
            assert client.state("counter", "J") is None
        [a_k] = write_events(s, client.db, [event(client, "K", "a", 2)], client.clock.now())
    client.wake([a_j, a_k])  # A publishes after its commit, like Garrison.ingest
    b.join(30)
    assert b_done.is_set()

    if not sqlite:
        # J's id is lower than B's but committed later; K's second event follows B's in K's sequence.
        assert (a_j.id < b_events[0].id < a_k.id) and (b_events[0].seq, a_k.seq) == (1, 2)
    wait_until(lambda: total(client) >= 3, what="all three events applied")
    assert_applied_exactly_once_in_order(
        client, {"J": [["a", 1]], "K": in_seq_order(client, "K")}
    )
    if not sqlite:
        assert client.state("counter", "K")["applied"] == [["b", 1], ["a", 2]]  # type: ignore[index]


def test_a_second_ingest_for_the_same_key_waits_until_the_first_commits(offline: Garrison) -> None:
    hold = 0.8
    second: list[IngestedEvent] = []
    done = threading.Event()

    def ingest_second() -> None:
        second.append(counter.send("add", "J", {"source": "second", "n": 2}, client=offline))
        done.set()

    t = threading.Thread(target=ingest_second)
    with offline.db.session() as s:
        [first] = write_events(s, offline.db, [event(offline, "J", "first", 1)], offline.clock.now())
        started = time.monotonic()
        t.start()
        assert not done.wait(hold), "the second ingest took a sequence number while the first was uncommitted"
        if not offline.db.is_sqlite:
            # On PostgreSQL the lock is the key's stream row: another key goes straight through.
            other = counter.send("add", "other", {"source": "other", "n": 1}, client=offline)
            assert other.seq == 1
    t.join(30)
    assert done.is_set() and time.monotonic() - started >= hold
    assert second[0].seq == first.seq + 1 and second[0].id > first.id

    Runner(offline).run_pending()
    assert offline.state("counter", "J")["applied"] == [["first", 1], ["second", 2]]  # type: ignore[index]


def _ingest_from_a_process(settings: Settings, source: str, count: int, start: Any) -> None:
    client = Garrison(settings)
    try:
        start.wait(60)
        for n in range(1, count + 1):
            counter.send("add", "hot", {"source": source, "n": n}, client=client)
    finally:
        client.db.dispose()


def test_eight_processes_ingesting_one_key_concurrently_lose_and_reorder_nothing(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    worker(settings)
    ctx = multiprocessing.get_context("spawn")
    procs_count, per_process = 8, 100
    start = ctx.Barrier(procs_count)
    procs = [
        ctx.Process(target=_ingest_from_a_process, args=(settings, f"p{i}", per_process, start))
        for i in range(procs_count)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * procs_count

    n_total = procs_count * per_process
    wait_until(lambda: (client.state("counter", "hot") or {}).get("count") == n_total, timeout=60,
               what="all 800 events applied")
    applied = client.state("counter", "hot")["applied"]  # type: ignore[index]
    assert len(applied) == n_total and len({tuple(a) for a in applied}) == n_total
    for i in range(procs_count):
        assert [n for source, n in applied if source == f"p{i}"] == list(range(1, per_process + 1))
    sources = [source for source, _ in applied]
    switches = sum(a != b for a, b in itertools.pairwise(sources))
    assert switches > procs_count, "the processes did not run concurrently"
    assert_applied_exactly_once_in_order(client, {"hot": applied})
