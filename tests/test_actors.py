"""Actors held outside the worker (garrison.automations.statecharts.actors), on both backends: preview,
save through the engine, no lost update against the worker, lock modes, and leases that never leak (a failed
load, a failed save, a SIGKILLed holder)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from garrison.automations.statecharts.actors import hold_actor, load_actor
from garrison.automations.statecharts.chart import Statechart
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core import leases
from garrison.core.publisher import NullPublisher
from garrison.errors import (
    ActorError,
    ActorLocked,
    EventFailed,
    LeaseLost,
    UnknownAutomation,
    ValidationError,
    VersionMismatch,
)
from garrison.models import EVENTS
from tests.harness import ROOT, WorkerProcess, child_env, wait_until

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
APPS = ("tests.apps.statecharts",)
FAST = 0.5


@pytest.fixture
def settings(backend: str, settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(backend, automations=APPS)


@pytest.fixture
def frozen(settings: Settings) -> Iterator[Garrison]:
    client = Garrison(settings, publisher=NullPublisher(), clock=FrozenClock(T0))
    yield client
    client.db.dispose()


def lease_holder(client: Garrison, automation: str, key: str) -> str | None:
    held = leases.holder(client.db, client.settings.tenant, f"actor:{automation}:{key}")
    return None if held is None or held.expires_at <= client.clock.now() else held.owner


def waiting_on_a_lock(client: Garrison) -> bool:
    """Whether a session of this database waits on a row lock (PostgreSQL)."""
    from sqlalchemy import text

    with client.db.engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar())


def count_of(client: Garrison, key: str) -> int:
    return int(client.state("tally", key)["context"]["count"])


# -- preview and save -------------------------------------------------------------------------------


def test_send_previews_locally_and_save_applies_through_the_engine(frozen: Garrison) -> None:
    actor = load_actor(frozen, "light", "l1")
    assert actor.snapshot is None and actor.value is None and actor.version == 0
    step = actor.send("light.next")
    assert step.handled and actor.value == "yellow" and actor.pending == ["light.next"]
    assert frozen.state("light", "l1") is None  # nothing is written before save
    result = actor.save()
    assert [(e.name, e.status) for e in result.events] == [("light.next", "applied")]
    assert result.snapshot == frozen.state("light", "l1") == actor.committed == actor.snapshot
    assert actor.value == "yellow" and actor.version == 1 and actor.pending == []
    with frozen.db.session() as s:
        stored = s.execute(select(EVENTS.c.target, EVENTS.c.data, EVENTS.c.idempotency_key)).one()
    assert stored.target == "light" and stored.data == {"$machine": {"name": "light", "version": 1}}
    assert stored.idempotency_key == f"garrison/actor:{actor.owner}:1"
    # The timer of the state it entered is a durable timer like any other.
    assert frozen.run_pending() == 0
    actor.close()
    with pytest.raises(ActorError, match="closed"):
        actor.send("light.next")


def test_hold_actor_saves_only_when_the_block_succeeds_and_always_releases_its_lease(frozen: Garrison) -> None:
    with pytest.raises(RuntimeError, match="changed my mind"), \
            hold_actor(frozen, "light", "l2", lock="read-write") as actor:
        actor.send("light.next")
        assert lease_holder(frozen, "light", "l2") == actor.owner
        raise RuntimeError("changed my mind")
    assert frozen.state("light", "l2") is None and lease_holder(frozen, "light", "l2") is None
    with hold_actor(frozen, "light", "l2", lock="read-write") as actor:
        actor.send("light.next")
        actor.send("light.next")
    assert frozen.state("light", "l2")["value"] == "red" and lease_holder(frozen, "light", "l2") is None


def test_save_applies_on_the_current_state_so_a_change_made_since_load_is_not_lost(frozen: Garrison) -> None:
    actor = load_actor(frozen, "tally", "t1")
    for n in (1, 2, 3):  # meanwhile the worker path applies three ticks
        frozen.ingest("tick", "t1", {"n": n})
    frozen.run_pending()
    actor.send("tick", {"n": "actor"})
    assert actor.context["count"] == 1  # the preview only knew the state at load
    result = actor.save()
    assert [e.status for e in result.events] == ["applied"]
    assert actor.context["count"] == 4 and actor.context["seen"] == [1, 2, 3, "actor"]
    assert count_of(frozen, "t1") == 4


def test_save_reports_events_no_transition_took_and_raises_for_one_that_failed(frozen: Garrison) -> None:
    with hold_actor(frozen, "light", "l3") as actor:
        actor.send("light.off")
        step = actor.send("light.next")
        assert not step.handled  # the preview already says so
    saved = actor.committed
    assert saved is not None and saved["value"] == "off"
    actor = load_actor(frozen, "light", "l3")
    actor.send("light.next")
    result = actor.save()
    assert [e.status for e in result.events] == ["ignored"] and not result.applied
    actor.close()

    armed = load_actor(frozen, "tally", "t2")
    frozen.ingest("arm", "t2")  # another writer arms the tally after our load: our tick fails on it
    frozen.run_pending()
    armed.send("tick", {"n": 1})
    with pytest.raises(EventFailed) as caught:
        armed.save()
    failure = caught.value
    assert failure.event == "tick" and failure.failure_id == frozen.failures()[0]
    assert "tally is armed" in str(failure) and failure.result.failed[0].error.startswith("RuntimeError")
    assert armed.context["armed"] is True and armed.pending == []  # reloaded; nothing left queued
    armed.close()


def test_a_repeated_request_with_the_same_idempotency_key_applies_its_event_once(frozen: Garrison) -> None:
    for _ in range(2):
        with hold_actor(frozen, "tally", "t3") as actor:
            actor.send("tick", {"n": 1}, idempotency_key="request-42")
        [sent] = actor_result_events(frozen, "t3")
        assert sent == 1
    assert count_of(frozen, "t3") == 1


def actor_result_events(client: Garrison, key: str) -> list[int]:
    with client.db.session() as s:
        return [int(i) for i in s.execute(select(EVENTS.c.id).where(EVENTS.c.key == key)).scalars()]


def test_what_cannot_be_held_is_refused_naming_the_argument(frozen: Garrison) -> None:
    with pytest.raises(ValidationError) as caught:
        load_actor(frozen, "light", "x", lock="exclusive")  # type: ignore[arg-type]
    assert caught.value.field == "lock"
    with pytest.raises(ValidationError) as caught:
        load_actor(frozen, "light", "")
    assert caught.value.field == "key"
    with pytest.raises(UnknownAutomation):
        load_actor(frozen, "nope", "x")
    with load_actor(frozen, "light", "x") as actor, pytest.raises(ValidationError) as caught:
        actor.send("light.unknown")
    assert caught.value.field == "event"


# -- locks ----------------------------------------------------------------------------------------


def test_contention_times_out_with_actor_locked_naming_the_actor_and_its_holder(frozen: Garrison) -> None:
    first = load_actor(frozen, "light", "l4", lock="read-write")
    with pytest.raises(ActorLocked) as caught:
        load_actor(frozen, "light", "l4", lock="read-write", acquire_timeout=FAST)
    locked = caught.value
    assert locked.holder == first.owner and locked.automation == "light" and locked.key == "l4"
    assert locked.attempts > 1 and "light/l4" in str(locked) and first.owner in str(locked)
    # A write-mode save must take the same lease, so it is refused too, and nothing is ingested.
    writer = load_actor(frozen, "light", "l4", lock="write", acquire_timeout=FAST)
    writer.send("light.next")
    with pytest.raises(ActorLocked):
        writer.save()
    assert frozen.state("light", "l4") is None and actor_result_events(frozen, "l4") == []
    first.close()
    assert writer.save().applied  # freed: the write-mode save goes through
    assert lease_holder(frozen, "light", "l4") is None  # and held its lease only around the save
    writer.close()
    # A mode without locks never waits.
    with load_actor(frozen, "light", "l4", lock="read-write"), load_actor(frozen, "light", "l4") as free:
        assert free.value == "yellow"


def test_a_failed_load_leaves_no_lock(settings: Settings) -> None:
    v2 = Statechart("light", version=2, initial="green", states={"green": {"on": {"light.next": "green"}}})
    v1 = Garrison(settings, publisher=NullPublisher())
    newer = Garrison(replace(settings, automations=()), publisher=NullPublisher(), automations=[v2])
    try:
        with hold_actor(v1, "light", "l5") as actor:
            actor.send("light.next")
        # Code of another version cannot use the stored snapshot: the load fails after taking the lease.
        with pytest.raises(VersionMismatch) as caught:
            load_actor(newer, "light", "l5", lock="read-write")
        assert (caught.value.expected, caught.value.got) == (2, 1)
        assert lease_holder(v1, "light", "l5") is None
        load_actor(v1, "light", "l5", lock="read-write", acquire_timeout=0).close()
    finally:
        v1.db.dispose()
        newer.db.dispose()


def test_a_failed_save_leaves_no_lock_in_write_and_read_write_modes(frozen: Garrison) -> None:
    for mode in ("write", "read-write"):
        key = f"t-{mode}"
        with pytest.raises(EventFailed), hold_actor(frozen, "tally", key, lock=mode) as actor:  # type: ignore[arg-type]
            frozen.ingest("arm", key)
            frozen.run_pending()
            actor.send("tick", {"n": 1})
        assert lease_holder(frozen, "tally", key) is None
        load_actor(frozen, "tally", key, lock="read-write", acquire_timeout=0).close()


def test_a_lease_that_expired_before_save_saves_nothing(frozen: Garrison) -> None:
    clock = frozen.clock
    assert isinstance(clock, FrozenClock)
    slow = load_actor(frozen, "tally", "t6", lock="read-write", lease_ttl=2)
    slow.send("tick", {"n": "slow"})
    clock.advance(3)  # the holder stalled past its TTL: another caller takes the actor
    with hold_actor(frozen, "tally", "t6", lock="read-write", acquire_timeout=0) as other:
        other.send("tick", {"n": "other"})
    with pytest.raises(LeaseLost):
        slow.save()
    slow.close()
    assert frozen.state("tally", "t6")["context"]["seen"] == ["other"]
    assert lease_holder(frozen, "tally", "t6") is None


def test_a_sigkilled_holders_lease_expires_and_another_caller_then_gets_the_actor(settings: Settings) -> None:
    client = Garrison(settings, publisher=NullPublisher())
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.statecharts", "hold", "light", "l7", "2"], cwd=ROOT,
        env=child_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("held "), line + holder.stdout.read()
        owner = line.split()[1]
        holder.kill()  # SIGKILL: no close, no release
        holder.wait(10)
        with pytest.raises(ActorLocked) as caught:
            load_actor(client, "light", "l7", lock="read-write", acquire_timeout=0.2)
        assert caught.value.holder == owner
        with hold_actor(client, "light", "l7", lock="read-write", acquire_timeout=5) as actor:
            assert actor.lease is not None and actor.lease.epoch == 2
            actor.send("light.next")
        assert client.state("light", "l7")["value"] == "yellow"
    finally:
        if holder.poll() is None:
            holder.kill()
        client.db.dispose()


# -- with a real worker ---------------------------------------------------------------------------


def test_actor_saves_and_a_real_worker_on_the_same_key_never_lose_an_update(
    settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    client = Garrison(settings)
    worker(settings)
    errors: list[BaseException] = []

    def actors(mode: str, n: int) -> None:
        try:
            for i in range(n):
                with hold_actor(client, "tally", "shared", lock=mode) as actor:  # type: ignore[arg-type]
                    actor.send("tick", {"n": f"{mode}-{i}"})
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=actors, args=(mode, 8)) for mode in ("none", "read-write")]
    for t in threads:
        t.start()
    for i in range(12):  # meanwhile events ingested by name go to the worker
        client.ingest("tick", "shared", {"n": f"worker-{i}"})
    for t in threads:
        t.join(60)
    assert not errors, errors
    wait_until(lambda: count_of(client, "shared") == 28, timeout=30, what="every tick to be applied")
    seen: list[Any] = client.state("tally", "shared")["context"]["seen"]
    assert sorted(seen) == sorted([f"none-{i}" for i in range(8)] + [f"read-write-{i}" for i in range(8)]
                                  + [f"worker-{i}" for i in range(12)])
    assert [s for s in seen if s.startswith("worker")] == [f"worker-{i}" for i in range(12)]  # in ingest order
    assert client.failures() == []
    client.db.dispose()


# -- saves that race: duplicates, a stalled holder, what the chart emits -------------------------------


def test_two_copies_of_one_request_saved_at_once_return_the_duplicate_instead_of_an_integrity_error(
    frozen: Garrison,
) -> None:
    """The second copy checks for its idempotency key before the first commits, then waits on the key's
    stream row; when the first commits, its insert conflicts. It must come back as the duplicate."""
    from garrison.core.ingest import validate, write_events

    chart = frozen.registry.get("tally")
    assert isinstance(chart, Statechart)
    first = validate("tick", "t9", chart.stamp({"n": "req-1"}), tenant=frozen.settings.tenant,
                     idempotency_key="req-1", target="tally", max_payload_bytes=10**6)
    copy = load_actor(frozen, "tally", "t9")
    copy.send("tick", {"n": "req-1"}, idempotency_key="req-1")
    outcome: dict[str, Any] = {}

    def save() -> None:
        try:
            outcome["result"] = copy.save()
        except Exception as exc:  # noqa: BLE001 - the test reports what escaped
            outcome["error"] = exc

    with frozen.db.session() as s:  # the first copy, still uncommitted while the second saves
        write_events(s, frozen.db, [first], frozen.clock.now())
        thread = threading.Thread(target=save)
        thread.start()
        if frozen.db.dialect == "postgresql":  # SQLite: the save waits for this whole transaction instead
            wait_until(lambda: waiting_on_a_lock(frozen), what="the second copy to wait on the stream row")
    thread.join(60)
    copy.close()
    assert "error" not in outcome, outcome.get("error")
    [sent] = outcome["result"].events
    assert sent.duplicate and sent.idempotency_key == "req-1"
    with frozen.db.session() as s:
        assert len(s.execute(select(EVENTS.c.id).where(EVENTS.c.idempotency_key == "req-1")).all()) == 1


@pytest.mark.parametrize("lock", ["write", "read-write"])
def test_a_holder_that_stalls_after_its_lease_check_writes_nothing_once_another_holder_took_over(
    frozen: Garrison, lock: str
) -> None:
    clock = frozen.clock
    assert isinstance(clock, FrozenClock)
    slow = load_actor(frozen, "tally", "t10", lock=lock, lease_ttl=2)  # type: ignore[arg-type]
    slow.send("tick", {"n": "slow"})
    checked = slow._lease.before_save

    def check_then_stall() -> None:
        checked()  # the lease is ours here...
        clock.advance(3)  # ...then the holder stalls past its TTL and another caller takes the actor
        with hold_actor(frozen, "tally", "t10", lock="read-write", acquire_timeout=0) as other:
            other.send("tick", {"n": "other"})

    slow._lease.before_save = check_then_stall  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        slow.save()
    slow.close()
    assert frozen.state("tally", "t10")["context"]["seen"] == ["other"]
    with frozen.db.session() as s:
        names = s.execute(select(EVENTS.c.data).where(EVENTS.c.key == "t10")).scalars().all()
    assert [d["n"] for d in names] == ["other"]


@pytest.mark.worker
def test_an_event_a_state_emits_on_entry_during_save_is_published_at_once(
    backend: str, settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess]
) -> None:
    """No beat runs here, so nothing but the save's publish can wake the key for the other automation."""
    settings = settings_for(backend, automations=(*APPS, "tests.apps.switchboard"))
    client = Garrison(settings)
    worker(settings)
    with hold_actor(client, "light", "lamp") as lamp:
        lamp.send("light.off")
    assert client.state("light", "lamp")["status"] == "done"
    wait_until(lambda: client.state("switchboard", "lamp") == {"off": 1},
               what="the switchboard applied the event the light emitted when it entered off")
    client.db.dispose()
