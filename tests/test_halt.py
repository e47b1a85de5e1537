"""go-state's Run stops at an error and Aggregate applies all or nothing; garrison offers both as
choices: ``on_failure="halt"`` (the entity waits at the failed message until it is retried or skipped)
and ``ingest_many(..., atomic=True)`` (the messages apply to an entity together, or not at all). The
default stays "skip": the failure is recorded and the entity goes on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from garrison import DefinitionError, Garrison, Machine, NullPublisher, Settings, ValidationError
from garrison.cli import cli
from garrison.models import FAILURES, VERSIONS
from garrison.ops.inspect import inspect_key
from garrison.ops.stats import collect_stats

# A bug in the handler that a deploy fixes: while True, a "boom" message raises.
BROKEN = {"now": True}


def _counter(name: str, **options: Any) -> Machine:
    machine = Machine(name, on={"inc": "inc", "boom": "inc"}, **options)

    @machine.reducer
    def inc(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
        if data.get("boom") and BROKEN["now"] and not (state or {}).get("fixed"):
            raise ValueError(f"boom at {data.get('n')}")
        state = state or {}
        return {**state, "count": state.get("count", 0) + 1, "seen": [*state.get("seen", []), data.get("n")]}

    @machine.reducer
    def fix(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
        return {**(state or {}), "fixed": True}

    return machine


@pytest.fixture
def halting(settings_for: Callable[..., Settings], backend: str) -> Any:
    settings = settings_for(backend, automations=())
    client = Garrison(settings, automations=[_counter("strict", on_failure="halt"), _counter("lenient")],
                      publisher=NullPublisher())
    BROKEN["now"] = True
    yield client
    BROKEN["now"] = True
    client.db.dispose()


def _seen(client: Garrison, name: str, key: str = "k") -> list[Any]:
    return list((client.state(name, key) or {}).get("seen", []))


def test_a_halting_entity_stops_at_the_failed_message_and_its_later_messages_wait_in_order(halting: Garrison) -> None:
    for n, name in enumerate(["inc", "inc", "boom", "inc", "inc"], 1):
        halting.ingest(name, "k", {"n": n, "boom": name == "boom"})
    halting.run_pending()
    assert _seen(halting, "lenient") == [1, 2, 4, 5]  # skip (the default): the failure is passed over
    assert _seen(halting, "strict") == [1, 2]  # halt: 4 and 5 wait behind 3
    report = inspect_key(halting, "k")
    [strict] = [e for e in report.entities if e.automation == "strict"]
    assert (strict.status, strict.cursor) == ("halted", 2)
    stats = collect_stats(halting)
    assert {a.automation: a.halted for a in stats.automations}["strict"] == 1

    halting.ingest("inc", "k", {"n": 6})
    halting.run_pending()
    assert _seen(halting, "strict") == [1, 2]  # still waiting, in order
    assert _seen(halting, "lenient") == [1, 2, 4, 5, 6]


def test_retrying_a_halted_message_applies_it_in_place_then_the_ones_that_waited(halting: Garrison) -> None:
    for n, name in enumerate(["inc", "boom", "inc"], 1):
        halting.ingest(name, "k", {"n": n, "boom": name == "boom"})
    halting.run_pending()
    [first] = halting.failures(automation="strict")
    assert _seen(halting, "strict") == [1]

    halting.retry(first)  # still broken: it fails again, in place, and the entity stays halted
    halting.run_pending()
    assert _seen(halting, "strict") == [1]
    [again] = halting.failures(automation="strict")
    assert again != first

    BROKEN["now"] = False  # the fix is deployed
    halting.retry(again)
    halting.run_pending()
    assert _seen(halting, "strict") == [1, 2, 3]  # in place, then the message that waited
    assert halting.failures(automation="strict") == []
    with halting.db.session() as s:
        statuses = dict(s.execute(select(FAILURES.c.id, FAILURES.c.status)).all())
    assert statuses[first] == statuses[again] == "retried"


def test_skipping_a_halted_message_goes_on_with_the_ones_that_waited(halting: Garrison) -> None:
    for n, name in enumerate(["inc", "boom", "inc", "inc"], 1):
        halting.ingest(name, "k", {"n": n, "boom": name == "boom"})
    halting.run_pending()
    [failure] = halting.failures(automation="strict")
    result = CliRunner().invoke(cli, ["skip", str(failure)], env=halting.settings.as_env())
    assert result.exit_code == 0 and "goes on after seq 2" in result.output, result.output
    halting.run_pending()
    assert _seen(halting, "strict") == [1, 3, 4]
    assert [e.status for e in inspect_key(halting, "k").entities if e.automation == "strict"] == ["active"]
    result = CliRunner().invoke(cli, ["skip", str(failure)], env=halting.settings.as_env())
    assert result.exit_code == 1 and "is skipped" in result.output


def test_on_failure_must_be_skip_or_halt() -> None:
    with pytest.raises(DefinitionError) as info:
        Machine("m", on_failure="ignore")
    assert info.value.part == "on_failure"


# -- atomic batches ----------------------------------------------------------------------------------


def test_an_atomic_batch_with_a_failing_message_applies_none_of_it(halting: Garrison) -> None:
    halting.ingest_many([{"name": "inc", "key": "k", "data": {"n": 1}},
                         {"name": "boom", "key": "k", "data": {"n": 2, "boom": True}},
                         {"name": "inc", "key": "k", "data": {"n": 3}}], atomic=True)
    halting.ingest("inc", "k", {"n": 4})
    halting.run_pending()
    assert _seen(halting, "lenient") == [4]  # the batch applied as nothing, then the rest went on
    assert _seen(halting, "strict") == []  # halted at the batch
    with halting.db.session() as s:
        failures = s.execute(select(FAILURES.c.automation, FAILURES.c.seq, FAILURES.c.error)).all()
        versions = s.execute(select(func.count()).select_from(VERSIONS)).scalar()
    assert sorted((f.automation, f.seq) for f in failures) == [("lenient", 1), ("strict", 1)]
    assert all("message 2 of an atomic batch of 3" in f.error for f in failures)
    assert versions == 1

    [lenient] = halting.failures(automation="lenient")
    halting.ingest("fix", "k", {}, target="lenient")
    halting.run_pending()
    halting.retry(lenient)  # the whole batch is ingested again, atomically, and now applies
    halting.run_pending()
    assert _seen(halting, "lenient") == [4, 1, 2, 3]


def test_an_atomic_batch_applies_all_its_messages_in_one_go(halting: Garrison) -> None:
    halting.ingest_many([{"name": "inc", "key": "k", "data": {"n": n}} for n in (1, 2, 3)], atomic=True)
    halting.run_pending()
    assert _seen(halting, "strict") == _seen(halting, "lenient") == [1, 2, 3]


def test_an_atomic_batch_larger_than_one_engine_read_still_applies_whole(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend, automations=(), engine_batch=4)
    client = Garrison(settings, automations=[_counter("lenient")], publisher=NullPublisher())
    try:
        client.ingest("inc", "k", {"n": 0})
        client.ingest_many([{"name": "inc", "key": "k", "data": {"n": n}} for n in range(1, 11)], atomic=True)
        client.run_pending()
        assert _seen(client, "lenient") == list(range(11))
    finally:
        client.db.dispose()


def test_an_atomic_batch_is_one_entitys_and_all_new_or_all_repeated(halting: Garrison) -> None:
    with pytest.raises(ValidationError) as info:
        halting.ingest_many([{"name": "inc", "key": "a"}, {"name": "inc", "key": "b"}], atomic=True)
    assert info.value.field == "events[1].key"
    batch = [{"name": "inc", "key": "k", "data": {"n": n}, "idempotency_key": f"i{n}"} for n in (1, 2)]
    first = halting.ingest_many(batch, atomic=True)
    again = halting.ingest_many(batch, atomic=True)
    assert [e.id for e in again] == [e.id for e in first] and all(e.duplicate for e in again)
    with pytest.raises(ValidationError) as info:
        halting.ingest_many([*batch, {"name": "inc", "key": "k", "idempotency_key": "i3"}], atomic=True)
    assert info.value.field == "events"
    halting.run_pending()
    assert _seen(halting, "lenient") == [1, 2]
