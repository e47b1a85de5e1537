"""Statecharts (garrison.automations.statecharts.chart): the semantics as pure steps, then on both backends
offline, and a delayed transition on a real worker that is SIGKILLed between the event and the delay."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import func, select

from garrison.automations.statecharts.chart import Statechart, Step
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core.contract import ApplyContext, Message
from garrison.core.ingest import EventIn, write_events
from garrison.core.publisher import NullPublisher
from garrison.core.timers import TIMER_EVENT
from garrison.errors import DefinitionError, ValidationError, VersionMismatch
from garrison.models import EVENTS, FAILURES, TIMERS, VERSIONS
from tests.apps.statecharts import light
from tests.harness import ROOT, WorkerProcess, wait_until

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
APPS = ("tests.apps.statecharts",)


def event(name: str, data: dict[str, Any] | None = None, *, target: str | None = None, at: float = 0) -> Message:
    return Message("acme", "k", 1, 1, name, data or {}, target, T0 + timedelta(seconds=at))


def run(chart: Statechart, names: list[str], snapshot: Any = None) -> Step:
    step: Step | None = None
    for name in names:
        step = chart.step(snapshot, event(name), key="k", now=T0)
        snapshot = step.snapshot
    assert step is not None
    return step


def fire(chart: Statechart, snapshot: Any, timer_data: dict[str, Any], at: float = 0) -> Step:
    return chart.step(snapshot, event(TIMER_EVENT, timer_data, target=chart.name, at=at), key="k", now=T0)


def logger(label: str) -> Callable[[dict[str, Any], Message], None]:
    def log(context: dict[str, Any], message: Message) -> None:
        context.setdefault("log", []).append(label)

    log.__name__ = label
    return log


def load_example() -> ModuleType:
    path = ROOT / "examples" / "order_fulfilment.py"
    spec = importlib.util.spec_from_file_location("examples_order_fulfilment", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORDERS = load_example().orders


# -- semantics, as pure steps ---------------------------------------------------------------------


def test_entering_a_compound_state_enters_its_initial_child_and_leaving_exits_deepest_first() -> None:
    chart = Statechart(
        "nested", initial="a",
        states={
            "a": {
                "initial": "a1", "entry": logger("enter a"), "exit": logger("exit a"),
                "states": {
                    "a1": {"entry": logger("enter a1"), "exit": logger("exit a1"), "on": {"go": {"target": "b",
                           "actions": logger("go")}}},
                },
            },
            "b": {"entry": logger("enter b")},
        },
    )
    started = chart.step(None, event("nothing"), key="k", now=T0)
    assert started.snapshot["value"] == {"a": "a1"} and not started.handled
    assert started.snapshot["context"]["log"] == ["enter a", "enter a1"]
    moved = chart.step(started.snapshot, event("go"), key="k", now=T0)
    assert moved.snapshot["value"] == "b"
    assert moved.snapshot["context"]["log"] == ["enter a", "enter a1", "exit a1", "exit a", "go", "enter b"]
    assert moved.snapshot["entered"] == {"b": 3} and moved.snapshot["entries"] == 3


def test_a_parallel_state_runs_its_regions_at_once_and_its_on_done_fires_when_every_region_is_final() -> None:
    cart = run(ORDERS, ["order.checkout"])
    assert cart.snapshot["value"] == "cart" and not cart.handled and cart.refused == ["has_items"]
    step = ORDERS.step(None, event("order.item_added", {"sku": "kiwi", "price": 4}), key="k", now=T0)
    step = run(ORDERS, ["order.checkout"], step.snapshot)
    step = ORDERS.step(step.snapshot, event("order.paid", {"amount": 4}), key="k", now=T0)
    assert step.snapshot["value"] == {"fulfilling": {"packing": "picking", "invoicing": "drafting"}}
    assert step.cancel_timers == ["after:awaiting_payment:2:0"]
    packed = run(ORDERS, ["order.packed"], step.snapshot)
    assert packed.snapshot["value"] == {"fulfilling": {"packing": "packed", "invoicing": "drafting"}}
    assert packed.emits == [] and packed.snapshot["status"] == "active"
    shipped = run(ORDERS, ["order.invoiced"], packed.snapshot)
    assert shipped.snapshot["value"] == "shipped" and shipped.snapshot["status"] == "done"
    [emit] = shipped.emits
    assert emit.name == "order.shipped" and emit.key == "k" and emit.data["total"] == 4
    assert emit.data["$source"] == {"machine": "orders", "version": 1, "state": "shipped", "entry": 10}
    assert emit.idempotency_key == "garrison/statechart:orders:k:entry:10"


def test_one_event_moves_every_region_of_a_parallel_state_and_leaving_it_exits_every_region() -> None:
    chart = Statechart(
        "regions", initial="p",
        states={
            "p": {"type": "parallel", "exit": logger("exit p"), "states": {
                "a": {"initial": "a1", "exit": logger("exit a"), "states": {
                    "a1": {"exit": logger("exit a1"), "on": {"e": "a2", "out": "#z"}}, "a2": {"entry": logger("a2")}}},
                "b": {"initial": "b1", "exit": logger("exit b"), "states": {
                    "b1": {"exit": logger("exit b1"), "on": {"e": "b2"}}, "b2": {"entry": logger("b2")}}},
            }},
            "z": {"id": "z"},
        },
    )
    both = run(chart, ["e"])
    assert both.snapshot["value"] == {"p": {"a": "a2", "b": "b2"}}
    assert both.snapshot["context"]["log"] == ["exit b1", "exit a1", "a2", "b2"]
    out = run(chart, ["out"])
    assert out.snapshot["value"] == "z"
    assert out.snapshot["context"]["log"] == ["exit b1", "exit b", "exit a1", "exit a", "exit p"]


def test_the_first_transition_whose_guard_passes_wins_and_refusing_guards_are_reported() -> None:
    chart = Statechart(
        "gate", initial="closed", context={"coins": 0},
        states={
            "closed": {"on": {"push": [
                {"target": "open", "guard": "paid"},
                {"target": "alarm", "guard": lambda c, e: e.data.get("force")},
            ]}},
            "open": {}, "alarm": {},
        },
        guards={"paid": lambda c, e: c["coins"] > 0},
    )
    refused = chart.step(None, event("push"), key="k", now=T0)
    assert not refused.handled and refused.refused == ["paid", "<lambda>"]
    assert refused.snapshot["value"] == "closed"
    forced = chart.step(refused.snapshot, event("push", {"force": True}), key="k", now=T0)
    assert forced.handled and forced.snapshot["value"] == "alarm"


def test_an_inner_transition_wins_over_an_outer_one_for_the_same_event() -> None:
    chart = Statechart(
        "inner", initial="outer",
        states={
            "outer": {"initial": "x", "on": {"e": "elsewhere"}, "states": {"x": {"on": {"e": "y"}}, "y": {}}},
            "elsewhere": {},
        },
    )
    assert run(chart, ["e"]).snapshot["value"] == {"outer": "y"}
    assert run(chart, ["e", "e"]).snapshot["value"] == "elsewhere"


def test_leaving_a_state_cancels_its_timer_and_re_entering_it_sets_a_new_one() -> None:
    chart = Statechart(
        "idle", initial="active",
        states={"active": {"after": {"5m": "asleep"}, "on": {"poke": "active", "nap": "asleep"}}, "asleep": {}},
    )
    start = chart.step(None, event("poke", at=0), key="k", now=T0)
    # The first event starts the machine (timer 1) and then re-enters "active" (timer 1 cancelled, timer 2 set).
    assert [t.name for t in start.timers] == ["after:active:1:0", "after:active:2:0"]
    assert start.cancel_timers == ["after:active:1:0"]
    assert start.timers[-1].due_at == T0 + timedelta(minutes=5)
    assert start.timers[-1].data == {"state": "active", "entry": 2, "delay": 0}
    stale = fire(chart, start.snapshot, {"state": "active", "entry": 1, "delay": 0})
    assert not stale.handled and stale.snapshot == start.snapshot
    due = fire(chart, start.snapshot, {"state": "active", "entry": 2, "delay": 0})
    assert due.handled and due.snapshot["value"] == "asleep" and due.cancel_timers == ["after:active:2:0"]
    left = run(chart, ["nap"], start.snapshot)
    assert left.cancel_timers == ["after:active:2:0"] and left.timers == []


def test_a_top_level_final_state_marks_the_snapshot_done_and_later_events_change_nothing() -> None:
    off = run(light, ["light.off"])
    assert off.snapshot["status"] == "done" and off.snapshot["value"] == "off"
    after = run(light, ["light.next"], off.snapshot)
    assert not after.handled and after.snapshot == off.snapshot


def test_a_targetless_transition_runs_its_actions_and_stays() -> None:
    step = ORDERS.step(None, event("order.item_added", {"sku": "a", "price": 2}), key="k", now=T0)
    step = ORDERS.step(step.snapshot, event("order.item_added", {"sku": "b", "price": 3}), key="k", now=T0)
    assert step.handled and step.snapshot["value"] == "cart"
    assert step.snapshot["context"] == {"items": ["a", "b"], "total": 5, "paid": 0}
    assert step.snapshot["entered"] == {"cart": 1}


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"initial": "a", "states": {"a": {"on": {"go": "nowhere"}}}}, "a", "targets unknown state 'nowhere'"),
    ({"initial": "a", "states": {"a": {"states": {"x": {}}}}}, "a", "needs an initial state"),
    ({"initial": "a", "states": {"a": {"initial": "z", "states": {"x": {}}}}}, "a", "initial state 'z' is not"),
    ({"initial": "nope", "states": {"a": {}}}, "(root)", "initial state 'nope' is not"),
    ({"initial": "a", "states": {"a": {"id": "same"}, "b": {"id": "same"}}}, "b", "id 'same' is already"),
    ({"initial": "a", "states": {"a": {"type": "final", "on": {"go": "a"}}}}, "a", "a final state takes no on"),
    ({"initial": "a", "states": {"a": {"after": {"soon": "a"}}}}, "a", "'soon' is not a duration"),
    ({"initial": "a", "states": {"a": {"on": {"go": {"target": "a", "guard": "missing"}}}}}, "a", "unknown guard"),
    ({"initial": "a", "states": {"a": {"entry": "missing"}}}, "a", "unknown action 'missing'"),
    ({"initial": "a", "states": {"a": {"onDone": "a"}}}, "a", "did you mean on_done"),
    ({"initial": "a", "states": {"a": {"type": "parallel"}}}, "a", "a parallel state needs child states"),
    ({"initial": "a", "states": {"a": {"type": "parallel", "initial": "x", "states": {"x": {}}}}}, "a",
     "a parallel state has no initial state"),
    ({"initial": "a", "states": {"a": {"on": {"go": {"target": ["b", "c"]}}}, "b": {}, "c": {}}}, "a",
     "cannot both be active"),
    ({"initial": "a", "states": {"a": {}, "b.c": {}}}, "(root)", "cannot be a state name"),
    ({"initial": "a", "states": {"a": {"emit": {"data": {}}}}}, "a", "emit is an event name"),
]


@pytest.mark.parametrize(("definition", "state", "words"), BAD, ids=[b[2] for b in BAD])
def test_a_bad_definition_is_refused_when_it_is_defined_naming_the_state(
    definition: dict[str, Any], state: str, words: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        Statechart("bad", **definition)
    assert caught.value.context["state"] == state and caught.value.context["automation"] == "bad"
    assert words in str(caught.value)
    assert (f"state {state!r}" if state != "(root)" else "the root state") in str(caught.value)


def test_targets_resolve_to_siblings_ancestors_children_and_ids() -> None:
    chart = Statechart(
        "targets", initial="a",
        states={
            "a": {"initial": "a1", "on": {"deep": ".a2.inner", "byid": "#far"},
                  "states": {"a1": {"on": {"sib": "a2", "up": "b"}},
                             "a2": {"initial": "inner", "states": {"inner": {}}}}},
            "b": {"initial": "b1", "states": {"b1": {"id": "far"}}},
        },
    )
    assert run(chart, ["sib"]).snapshot["value"] == {"a": {"a2": "inner"}}
    assert run(chart, ["up"]).snapshot["value"] == {"b": "b1"}
    assert run(chart, ["deep"]).snapshot["value"] == {"a": {"a2": "inner"}}
    assert run(chart, ["byid"]).snapshot["value"] == {"b": "b1"}


def test_an_event_stamped_for_another_version_is_refused_naming_both_versions() -> None:
    v2 = Statechart("light", version=2, initial="green", states={"green": {"on": {"light.next": "green"}}})
    ctx = ApplyContext(tenant="acme", key="k", now=T0)
    stamped = event("light.next", light.stamp({"n": 1}), target="light")
    with pytest.raises(VersionMismatch) as caught:
        v2.apply(None, stamped, ctx)
    assert (caught.value.expected, caught.value.got) == (2, 1)
    assert "version 1" in str(caught.value) and "version 2" in str(caught.value)
    # The right version takes it, and actions never see the stamp.
    outcome = light.apply(None, stamped, ctx)
    assert outcome.changed and outcome.state["value"] == "yellow"
    # An untargeted event stamped for another machine is not this one's business.
    other = event("light.next", {"$machine": {"name": "other", "version": 1}})
    assert not light.apply(None, other, ctx).changed


def test_a_snapshot_of_another_version_is_migrated_or_refused() -> None:
    stored = run(light, ["light.next"]).snapshot
    v2 = Statechart("light", version=2, initial="green",
                    states={"green": {"on": {"light.next": "amber"}}, "amber": {}})
    with pytest.raises(VersionMismatch, match="stored by version 1"):
        v2.restore(stored, "k")

    def rename(snapshot: dict[str, Any]) -> dict[str, Any]:
        snapshot["entered"] = {"amber" if k == "yellow" else k: n for k, n in snapshot["entered"].items()}
        return snapshot

    v2m = Statechart("light", version=2, initial="green", migrations={1: rename},
                     states={"green": {"on": {"light.next": "amber"}}, "amber": {}})
    restored = v2m.restore(stored, "k")
    assert restored is not None and restored["version"] == 2 and restored["value"] == "amber"
    v2bad = Statechart("light", version=2, initial="green", migrations={1: lambda s: s},
                       states={"green": {"on": {"light.next": "green"}}})
    with pytest.raises(VersionMismatch, match="state 'yellow', which version 2 does not define"):
        v2bad.restore(stored, "k")


def test_an_entry_emit_key_comes_from_the_entry_counter_so_re_applying_emits_the_same_event() -> None:
    ctx = ApplyContext(tenant="acme", key="k", now=T0)
    yellow = run(light, ["light.next"]).snapshot
    first = light.apply(yellow, event("light.off"), ctx)
    again = light.apply(yellow, event("light.off"), ctx)
    assert first.emits == again.emits and first.emits[0].idempotency_key == "garrison/statechart:light:k:entry:3"


def test_sending_an_event_the_chart_never_handles_is_refused_at_the_caller(offline: Garrison) -> None:
    offline.register(light)
    with pytest.raises(ValidationError) as caught:
        light.send("light.nope", "k", client=offline)
    assert caught.value.field == "event" and "light.next" in str(caught.value)


# -- on both backends, offline --------------------------------------------------------------------


@pytest.fixture
def frozen(settings_for: Callable[..., Settings], backend: str) -> Iterator[Garrison]:
    client = Garrison(settings_for(backend, automations=APPS), publisher=NullPublisher(), clock=FrozenClock(T0))
    yield client
    client.db.dispose()


def count(client: Garrison, table: Any, *where: Any) -> int:
    with client.db.session() as s:
        return int(s.execute(select(func.count()).select_from(table).where(table.c.tenant == "default", *where))
                   .scalar_one())


def test_events_ingested_by_name_drive_a_statechart_and_its_delay_runs_on_a_durable_timer(frozen: Garrison) -> None:
    frozen.ingest("light.next", "x")
    frozen.run_pending()
    assert frozen.state("light", "x")["value"] == "yellow"
    assert count(frozen, TIMERS, TIMERS.c.status == "pending") == 1
    clock = frozen.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(1.9)
    frozen.run_pending()
    assert frozen.state("light", "x")["value"] == "yellow"
    clock.advance(0.2)
    frozen.run_pending()
    snapshot = frozen.state("light", "x")
    assert snapshot["value"] == "red" and snapshot["context"]["log"] == [TIMER_EVENT]
    assert count(frozen, TIMERS, TIMERS.c.status == "fired") == 1
    # Leaving yellow early cancels its timer with an UPDATE.
    for _ in range(2):
        frozen.ingest("light.next", "y")
        frozen.run_pending()
    assert frozen.state("light", "y")["value"] == "red"
    assert count(frozen, TIMERS, TIMERS.c.key == "y", TIMERS.c.status == "cancelled") == 1
    assert frozen.replay("light").ok


def test_an_entry_emit_is_ingested_once_and_never_again_on_reload_replay_or_reprocessing(frozen: Garrison) -> None:
    from garrison.automations.statecharts.actors import load_actor

    frozen.ingest("light.off", "z")
    frozen.run_pending()
    emitted = [EVENTS.c.name == "light.switched_off"]
    assert count(frozen, EVENTS, *emitted) == 1
    assert frozen.replay("light").ok and frozen.check("light", "z") == []
    with load_actor(frozen, "light", "z") as actor:  # reload the done snapshot and save it again
        assert actor.done and actor.value == "off"
        actor.send("light.next")
    frozen.run_pending()
    # Reprocessing the same entry (a worker killed after commit and before it noticed) writes nothing new.
    outcome = light.apply(None, event("light.off"), ApplyContext(tenant="default", key="z", now=T0))
    [spec] = outcome.emits
    with frozen.db.session() as s:
        [again] = write_events(s, frozen.db, [EventIn("default", spec.name, spec.key, spec.data, spec.idempotency_key)],
                               T0)
    assert again.duplicate
    assert count(frozen, EVENTS, *emitted) == 1
    # Entering the state anew is a new entry and emits again.
    frozen.ingest("light.off", "z2")
    frozen.run_pending()
    assert count(frozen, EVENTS, *emitted) == 2


def test_in_the_worker_path_an_event_for_another_version_is_marked_failed_with_the_named_error(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend)
    v2 = Statechart("light", version=2, initial="green", states={"green": {"on": {"light.next": "green"}}})
    old = Garrison(settings, publisher=NullPublisher(), automations=[light])
    new = Garrison(settings, publisher=NullPublisher(), automations=[v2])
    try:
        light.send("light.next", "v", client=old)
        new.run_pending()
        with new.db.session() as s:
            failure = s.execute(select(FAILURES.c.error_type, FAILURES.c.error, FAILURES.c.automation)).one()
        assert failure.error_type == "VersionMismatch" and failure.automation == "light"
        assert "version 1" in failure.error and "version 2" in failure.error
        assert new.state("light", "v") is None
        # The same code as the sender applies it once retried there.
        old.retry(new.failures()[0])
        old.run_pending()
        assert old.state("light", "v")["value"] == "yellow"
    finally:
        old.db.dispose()
        new.db.dispose()


def test_the_order_fulfilment_example_ships_a_paid_order_and_cancels_an_unpaid_one_on_its_timer(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    example = load_example()
    client = Garrison(settings_for(backend), publisher=NullPublisher(), clock=FrozenClock(T0))
    try:
        result = example.main(client)
        paid, unpaid = (result["states"][k] for k in result["keys"])
        assert (paid["value"], paid["status"], paid["context"]) == (
            "shipped", "done", {"items": ["kiwi", "melon"], "total": 13, "paid": 13})
        assert (unpaid["value"], unpaid["status"]) == ("cancelled", "done")
        with client.db.session() as s:
            emitted = sorted(s.execute(select(EVENTS.c.name, EVENTS.c.key).where(
                EVENTS.c.tenant == "default", EVENTS.c.name.in_(["order.shipped", "order.cancelled"]))).all())
        assert emitted == [("order.cancelled", result["keys"][1]), ("order.shipped", result["keys"][0])]
        assert client.replay("orders").ok
    finally:
        client.db.dispose()


def test_the_order_fulfilment_example_runs_as_a_script_with_nothing_else_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["GARRISON_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "order_fulfilment.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "-1 shipped done" in done.stdout and "-2 cancelled done" in done.stdout


# -- a real worker --------------------------------------------------------------------------------


def test_a_delayed_transition_survives_its_worker_sigkilled_and_fires_once(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess]
) -> None:
    settings = settings_for(backend, automations=APPS)
    client = Garrison(settings)
    try:
        doomed = worker(settings)  # no beat: only this worker holds the timer's ETA task
        client.ingest("light.next", "crossing")
        wait_until(lambda: (client.state("light", "crossing") or {}).get("value") == "yellow", what="yellow")
        doomed.kill()  # before the 2 s delay is up: the timer is still pending
        assert client.state("light", "crossing")["value"] == "yellow"
        assert count(client, TIMERS, TIMERS.c.status == "pending") == 1
        worker(settings, beat=True)  # its relay sweeps the overdue timer
        wait_until(lambda: client.state("light", "crossing")["value"] == "red", timeout=60, what="red")
        assert client.state("light", "crossing")["context"]["log"] == [TIMER_EVENT]
        assert count(client, VERSIONS, VERSIONS.c.message == TIMER_EVENT) == 1
        assert count(client, EVENTS, EVENTS.c.name == TIMER_EVENT) == 1
        assert count(client, TIMERS, TIMERS.c.status == "fired") == 1
    finally:
        client.db.dispose()
