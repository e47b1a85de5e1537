"""Node state (Happen) on both backends: the atomic set under eight processes, views' null rules, pattern
matching, and broadcast / send with causal ids through a real worker, where handler sets and outside sets
of one node serialize on the same lock."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from garrison.automations.nodes import NodeEvent, Nodes
from garrison.automations.nodes.events import compile_pattern, takes_views
from garrison.automations.nodes.events import select as select_path
from garrison.cli import cli
from garrison.client import Garrison, configure
from garrison.config import Settings
from garrison.core.contract import Message
from garrison.core.publisher import NullPublisher
from garrison.errors import DefinitionError, UnknownNode, ValidationError
from garrison.models import EVENTS, FAILURES, VERSIONS
from garrison.ops.inspect import inspect_key
from tests.apps.nodes import audit, billing, counter, dashboard, increment, inventory, mesh, orders
from tests.harness import ROOT, WorkerProcess, child_env, wait_until


@pytest.fixture
def nodes_settings(backend: str, settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(backend, automations=("tests.apps.nodes",))


@pytest.fixture
def offline(nodes_settings: Settings) -> Iterator[Garrison]:
    """A client with the node system that publishes nothing; ``run_pending`` applies the work."""
    c = Garrison(nodes_settings, publisher=NullPublisher())
    previous = configure(c)
    yield c
    configure(previous)
    c.db.dispose()


def event(type: str, payload: Any = None) -> NodeEvent:
    return NodeEvent(type=type, payload=payload or {}, id="e", correlation_id="e", timestamp=datetime.now(UTC))


def seen_ids(node: Any, client: Garrison) -> list[str]:
    return [e["id"] for e in node.state.get("seen", client=client)]


def count(client: Garrison, table: Any, *where: Any) -> int:
    with client.db.session() as s:
        return int(s.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# -- definitions, patterns and selectors (no database) ---------------------------------------------------------


def test_patterns_match_exact_names_one_segment_wildcards_deep_wildcards_alternatives_and_predicates() -> None:
    def matches(pattern: Any, type: str, payload: Any = None) -> bool:
        return compile_pattern(pattern).matches(event(type, payload))

    assert matches("order.created", "order.created")
    assert not matches("order.created", "order.created.late")
    assert not matches("order.created", "order_created")          # a dot is a dot, not any character
    assert matches("order.*", "order.shipped")
    assert not matches("order.*", "order.item.added")              # * is one segment
    assert not matches("order.*", "order.")
    assert matches("order.**", "order.item.added")
    assert matches("*.created", "invoice.created")
    assert matches("{order,invoice}.created", "invoice.created")
    assert not matches("{order,invoice}.created", "refund.created")
    assert matches("{order.*,stock}.done", "order.item.done")
    assert matches(lambda e: e.payload.get("amount", 0) >= 100, "anything", {"amount": 100})
    assert not matches(lambda e: e.payload.get("amount", 0) >= 100, "anything", {"amount": 99})


def test_a_bad_pattern_or_node_definition_is_refused_at_definition_naming_it() -> None:
    for bad in ["order.{a,b", "order.a}", "{a,}.x", "{a,{b}}", ""]:
        with pytest.raises(DefinitionError) as info:
            compile_pattern(bad)
        assert repr(bad) in str(info.value) or bad in str(info.value)
    system = Nodes("defs")
    node = system.node("one")
    with pytest.raises(DefinitionError, match="defined twice"):
        system.node("one")
    with pytest.raises(DefinitionError, match="not JSON"):
        system.node("two", initial={"when": datetime.now(UTC)})
    with pytest.raises(DefinitionError, match="at least one pattern"):
        node.on()
    with pytest.raises(UnknownNode) as unknown:
        system["nope"]
    assert unknown.value.field == "node" and "'nope'" in str(unknown.value)


def test_a_selector_is_a_callable_a_dotted_path_or_nothing_and_a_missing_path_gives_none() -> None:
    state = {"orders": {"o-1": {"status": "paid", "lines": [{"sku": "a"}, {"sku": "b"}]}}}
    assert select_path(state, None) == state
    assert select_path(state, lambda s: len(s["orders"])) == 1
    assert select_path(state, "orders.o-1.status") == "paid"
    assert select_path(state, "orders.o-1.lines.1.sku") == "b"
    assert select_path(state, "orders.o-2.status") is None
    assert select_path(state, "orders.o-1.lines.7") is None
    copy = select_path(state, "orders")
    copy["o-1"]["status"] = "mutated"
    assert state["orders"]["o-1"]["status"] == "paid"               # a selector gets a copy
    with pytest.raises(ValidationError):
        select_path(state, 3)  # type: ignore[arg-type]


def test_set_passes_views_only_to_a_function_of_two_positional_parameters() -> None:
    def one(state: Any) -> Any: ...
    def two(state: Any, views: Any) -> Any: ...
    def star(*args: Any) -> Any: ...

    assert not takes_views(one) and not takes_views(lambda s: s) and not takes_views(dict)
    assert takes_views(two) and takes_views(lambda s, v: s) and takes_views(star)


# -- state, versions, views (offline: the engine runs in this process) --------------------------------------


def test_set_stores_each_state_as_the_next_version_with_a_history_row_that_inspect_shows(offline: Garrison) -> None:
    assert counter.state.snapshot().version == 0 and counter.state.get() == {"count": 0}
    first = counter.state.set(lambda s: {"count": s["count"] + 1})
    second = counter.state.set(lambda s, views: {"count": s["count"] + 1, "orders": views["orders"].get()})
    assert (first.version, second.version) == (1, 2)
    assert counter.state.get("count") == 2 and counter.state.get("orders") == {"orders": {}, "seen": []}

    unchanged = counter.state.set(lambda s: s)
    assert unchanged.version == 2                                   # an equal result stores nothing
    with pytest.raises(ValidationError) as refused:
        counter.state.set(lambda s: {"count": {1, 2}})
    assert refused.value.field == "state" and "'counter'" in str(refused.value)
    assert counter.state.snapshot().version == 2

    report = inspect_key(offline, "counter")
    assert [(e.automation, e.version) for e in report.entities] == [("mesh", 2)]
    assert [(v.version, v.message, v.state["count"]) for v in report.versions] == [(1, "set", 1), (2, "set", 2)]


def test_set_with_a_dict_replaces_the_whole_state_from_outside_and_in_a_handler_as_happen_does(
    offline: Garrison,
) -> None:
    counter.state.set(lambda s: {"count": 3, "note": "old"})
    replaced = counter.state.set({"count": 7})                       # Happen: orderNode.state.set({ ... })
    assert (replaced.version, counter.state.get()) == (2, {"count": 7})   # replaced, not merged

    mesh.send("inventory", "stock.replaced", {"replace": {"kiwi": 5}}, client=offline)
    assert offline.run_pending() == 1
    assert inventory.state.snapshot().state == {"kiwi": 5}           # the handler's dict replaced its record
    assert count(offline, FAILURES) == 0


def test_set_with_something_neither_a_function_nor_a_dict_is_refused_naming_the_state(offline: Garrison) -> None:
    for bad in (42, ["count", 1], "count"):
        with pytest.raises(ValidationError) as refused:
            counter.state.set(bad)  # type: ignore[arg-type]
        assert refused.value.field == "state" and "a dict that replaces it" in refused.value.message
    assert counter.state.snapshot().version == 0
    assert count(offline, VERSIONS) == 0


def test_generator_and_async_handlers_are_refused_when_defined_naming_the_handler() -> None:
    system = Nodes("progress")
    worker_node = system.node("worker")

    def chunks(event: NodeEvent, node: Any) -> Iterator[dict[str, int]]:
        yield {"progress": 50}

    async def later(event: NodeEvent, node: Any) -> None:
        return None

    async def stream(event: NodeEvent, node: Any) -> Any:
        yield {"progress": 50}

    for fn, kind in ((chunks, "a generator"), (later, "an async function"), (stream, "an async generator")):
        with pytest.raises(DefinitionError) as refused:
            worker_node.on("work")(fn)
        assert f"handler {fn.__name__!r} of node 'worker' is {kind}" in refused.value.message
        assert refused.value.context["part"] == "worker"
    assert worker_node.handlers == []


def test_a_handler_object_that_returns_a_generator_fails_its_message_instead_of_being_skipped(
    nodes_settings: Settings,
) -> None:
    system = Nodes("wrapped")
    node = system.node("n", initial={"done": False})

    class Wrapper:  # a callable object: inspect cannot tell it makes a generator until it is called
        def __call__(self, event: NodeEvent, ctx: Any) -> Iterator[None]:
            ctx.state.set({"done": True})
            yield None

    node.on("work")(Wrapper())
    client = Garrison(nodes_settings, automations=[system], publisher=NullPublisher())
    try:
        system.send("n", "work", client=client)
        client.run_pending()
        assert node.state.get(client=client) == {"done": False}
        with client.db.session() as s:
            failure = s.execute(select(FAILURES.c.error_type, FAILURES.c.error)).one()
        assert failure.error_type == "TypeError" and "returned a generator instead of running" in failure.error
    finally:
        client.db.dispose()


def test_views_and_collect_give_none_for_the_node_itself_and_unknown_nodes_and_committed_state_otherwise(
    offline: Garrison,
) -> None:
    billing.state.set(lambda s: {**s, "invoices": [{"order": "o-0", "amount": 1}]})
    seen: dict[str, Any] = {}

    def look(state: Any, views: Any) -> Any:
        seen["self"] = views["orders"].get()
        seen["unknown"] = views["ghost"].get("anything")
        seen["other"] = views["billing"].get("invoices.0.order")
        seen["never stored"] = views["inventory"].get()
        seen["collect"] = views.collect({"orders": None, "ghost": None, "billing": lambda b: len(b["invoices"]),
                                         "dashboard": "seen"})
        return state

    orders.state.set(look)
    assert seen == {
        "self": None, "unknown": None, "other": "o-0", "never stored": {"seen": []},
        "collect": {"orders": None, "ghost": None, "billing": 1, "dashboard": []},
    }
    outside = orders.views(client=offline)
    assert outside["orders"].get() is None and outside["billing"].get("invoices.0.amount") == 1

    # The same rules inside a handler, reading committed state through the engine's process.
    mesh.send("dashboard", "report", client=offline)
    offline.run_pending()
    assert dashboard.state.get("report") == {
        "orders": {}, "dashboard": None, "ghost": None, "billing": 1,
    }


def test_views_inside_a_handler_read_the_database_the_message_came_from_whatever_the_default_client(
    offline: Garrison, tmp_path: Path
) -> None:
    """Views in a handler read through the engine's own transaction: a script running ``run_pending`` on
    its client gets that client's nodes even when the process's default client is another database."""
    billing.state.set(lambda s: {**s, "invoices": [{"order": "o-9", "amount": 9}]}, client=offline)
    elsewhere = Garrison(Settings(data_dir=tmp_path / "elsewhere", automations=("tests.apps.nodes",)),
                         publisher=NullPublisher())
    elsewhere.init_db()
    previous = configure(elsewhere)
    try:
        mesh.send("dashboard", "report", client=offline)
        offline.run_pending()
    finally:
        configure(previous)
        elsewhere.db.dispose()
    assert dashboard.state.get("report", client=offline)["billing"] == 1


def test_replay_skips_node_systems_and_check_accepts_versions_set_outside_the_log(offline: Garrison) -> None:
    """A node's set() from a script is not in the event log: replay names the system as skipped instead
    of reporting every such node as mismatched, and check passes over those versions."""
    counter.state.set(lambda s: {"count": s["count"] + 5}, client=offline)
    mesh.send("counter", "count.bump", client=offline)
    offline.run_pending()
    assert counter.state.get("count", client=offline) == 6
    report = offline.replay()
    assert report.ok and report.skipped == ["mesh"]
    assert offline.check("mesh", "counter") == []
    result = CliRunner().invoke(cli, ["replay"], env=child_env(offline.settings))
    assert result.exit_code == 0, result.output
    assert "skipped mesh" in result.output


def test_a_handler_that_raises_stores_nothing_and_sends_nothing(offline: Garrison) -> None:
    mesh.send("inventory", "stock.item.added", {"sku": "a", "explode": True}, client=offline)
    offline.run_pending()
    assert inventory.state.snapshot().version == 0
    assert count(offline, FAILURES, FAILURES.c.key == "inventory") == 1


def test_send_refuses_an_unknown_node_or_one_without_a_handler_and_writes_nothing(offline: Garrison) -> None:
    with pytest.raises(UnknownNode):
        mesh.send("ghost", "order.created", {}, client=offline)
    with pytest.raises(ValidationError) as no_handler:
        mesh.send("inventory", "order.created", {}, client=offline)
    assert no_handler.value.field == "type"
    with pytest.raises(ValidationError) as bad_payload:
        mesh.broadcast("order.created", {"at": datetime.now(UTC)}, client=offline)
    assert bad_payload.value.field == "payload"
    assert mesh.broadcast("nobody.listens", client=offline).nodes == ()
    assert count(offline, EVENTS) == 0


def test_a_broadcast_with_an_idempotency_key_is_delivered_once(offline: Garrison) -> None:
    a = mesh.broadcast("order.updated", {"id": "o-1"}, client=offline, idempotency_key="req-1")
    b = mesh.broadcast("order.updated", {"id": "o-1"}, client=offline, idempotency_key="req-1")
    offline.run_pending()
    assert a.event.id == b.event.id and a.nodes == ("orders",)
    assert seen_ids(orders, offline) == [a.event.id]


def test_an_event_ingested_by_hand_without_an_envelope_is_its_own_payload(offline: Garrison) -> None:
    stored = offline.ingest("stock.added", "inventory", {"sku": "k"}, target="mesh")
    offline.run_pending()
    [seen] = inventory.state.get("seen")
    assert seen == {"type": "stock.added", "id": f"event-{stored.id}", "causation_id": None,
                    "correlation_id": f"event-{stored.id}", "sender": None}
    assert NodeEvent.from_message(Message(
        tenant="t", key="k", seq=1, event_id=9, name="x", data={"a": 1}, target="mesh",
        created_at=datetime.now(UTC))).payload == {"a": 1}


# -- concurrency: no lost update ------------------------------------------------------------------------------


def _run_setters(
    settings: Settings, processes: int, per_process: int, *, join: bool = False, pause: float = 0.0
) -> tuple[list[Any], Any]:
    """Start the processes; the barrier is returned too, as it must outlive their start-up. With ``join``
    the caller is one more party of the barrier, to start its own work at the moment they start."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes + int(join))
    procs = [ctx.Process(target=increment, args=(settings, per_process, start, pause)) for _ in range(processes)]
    for p in procs:
        p.start()
    return procs, start


def test_eight_processes_setting_one_node_500_times_each_lose_no_update(
    offline: Garrison, nodes_settings: Settings
) -> None:
    procs, _start = _run_setters(nodes_settings, 8, 500)
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * 8
    snapshot = counter.state.snapshot()
    assert snapshot.state == {"count": 4000} and snapshot.version == 4000
    with offline.db.session() as s:
        versions = s.execute(
            select(func.count(), func.min(VERSIONS.c.version), func.max(VERSIONS.c.version))
            .where(VERSIONS.c.tenant == offline.settings.tenant, VERSIONS.c.key == "counter")
        ).one()
    assert tuple(versions) == (4000, 1, 4000)


# -- a real worker ---------------------------------------------------------------------------------------------


def test_on_a_real_worker_broadcast_reaches_each_subscriber_once_send_reaches_one_and_ids_follow_two_hops(
    nodes_settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    client = Garrison(nodes_settings)
    previous = configure(client)
    try:
        worker(nodes_settings)
        # Handler sets (count.bump, in the worker) and outside sets race on one node: both take its lock.
        # Both sides are spread over about a second (setters pause 10 ms between sets; the bumps go out
        # in 10 rounds 100 ms apart), so the worker's applies land between the outside sets.
        setters, start = _run_setters(nodes_settings, 2, 100, join=True, pause=0.01)
        quiet = Garrison(nodes_settings, publisher=NullPublisher())
        start.wait(60)
        for _ in range(10):
            for _ in range(20):
                mesh.send("counter", "count.bump", client=quiet)
            client.publisher.publish_keys(client.settings.tenant, ["counter"])
            time.sleep(0.1)
        quiet.db.dispose()

        sent = mesh.broadcast("order.created", {"id": "o-1", "amount": 150}, client=client)
        small = mesh.broadcast("order.created", {"id": "o-2", "amount": 5}, client=client)
        stock = mesh.send("inventory", "stock.item.added", {"sku": "k"}, client=client)
        assert sent.nodes == ("orders", "dashboard", "audit") and small.nodes == ("orders", "dashboard")
        assert stock.nodes == ("inventory",)

        wait_until(lambda: len(audit.state.get("seen")) == 2 and len(dashboard.state.get("seen")) == 4,
                   timeout=60, what="both order chains to reach the dashboard and audit")
        mesh.send("dashboard", "report", client=client)
        wait_until(lambda: dashboard.state.get("report") is not None, timeout=30, what="the report")
        for p in setters:
            p.join(120)
        assert [p.exitcode for p in setters] == [0, 0]
        wait_until(lambda: counter.state.get("count") == 400, timeout=60, what="400 increments")
        assert counter.state.snapshot().version == 400

        e0 = sent.event
        assert e0.correlation_id == e0.id and e0.causation_id is None
        [hop1] = [e for e in billing.state.get("seen") if e["correlation_id"] == e0.id]
        assert hop1 == {"type": "invoice.requested", "id": hop1["id"], "causation_id": e0.id,
                        "correlation_id": e0.id, "sender": "orders"}
        chain = [e for e in audit.state.get("seen") if e["correlation_id"] == e0.id]
        assert [(e["type"], e["causation_id"], e["sender"]) for e in chain] == [
            ("order.created", None, None), ("invoice.created", hop1["id"], "billing"),
        ]
        assert billing.state.get("invoices") == [{"order": "o-1", "amount": 150}, {"order": "o-2", "amount": 5}]

        # Exactly once: every node saw each event id once; a non-subscriber saw nothing.
        for node in (orders, billing, dashboard, audit, inventory):
            ids = seen_ids(node, client)
            assert len(ids) == len(set(ids)), node.name
        assert seen_ids(inventory, client) == [stock.event.id]
        assert [e["type"] for e in dashboard.state.get("seen")].count("invoice.created") == 2
        assert count(client, EVENTS, EVENTS.c.idempotency_key.like(f"garrison/node:{e0.id}:%")) == 3
        assert dashboard.state.get("report") == {
            "orders": {"o-1": {"id": "o-1", "amount": 150}, "o-2": {"id": "o-2", "amount": 5}},
            "dashboard": None, "ghost": None, "billing": 2,
        }
        assert count(client, FAILURES) == 0
        with client.db.session() as s:
            labels = dict(s.execute(
                select(VERSIONS.c.message, func.count()).where(VERSIONS.c.key == "counter")
                .group_by(VERSIONS.c.message)
            ).all())
        assert labels == {"set": 200, "count.bump": 200}
        with client.db.session() as s:
            order = list(s.execute(
                select(VERSIONS.c.message).where(VERSIONS.c.key == "counter").order_by(VERSIONS.c.version)
            ).scalars())
        switches = sum(a != b for a, b in itertools.pairwise(order))
        assert switches >= 2, f"the worker and the setters did not run concurrently: {order}"
    finally:
        configure(previous)
        client.db.dispose()


# -- the example ------------------------------------------------------------------------------------------------


def _load_example() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("examples_order_nodes", ROOT / "examples" / "order_nodes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_order_nodes_example_ships_an_order_through_four_nodes(offline: Garrison) -> None:
    example = _load_example()
    result = example.main(offline)
    assert result["orders"] == {"o-1": {"sku": "kiwi", "qty": 2, "customer": "c-1", "status": "shipped",
                                        "address": "1 Quay St"}}
    assert result["inventory"] == {"kiwi": 3}
    assert result["dashboard"] == {"shipped": 1, "last": "o-1"}
    chain = result["chain"]
    assert [e["type"] for e in chain] == ["order.placed", "order.accepted", "stock.reserved", "order.shipped"]
    assert [e["causation_id"] for e in chain] == [None] + [e["id"] for e in chain[:-1]]
    assert {e["correlation_id"] for e in chain} == {chain[0]["id"]}


def test_the_order_nodes_example_runs_as_a_script_with_nothing_else_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["GARRISON_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "order_nodes.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "o-1 shipped to 1 Quay St" in done.stdout
