"""Ingest refuses bad input at the caller, naming the field, and writes nothing (guarantee 7); a batch is all or
nothing; an idempotency key makes a second ingest return the first event, even when both race."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from garrison.errors import PayloadTooLarge, ValidationError
from garrison.models import EVENTS, STREAMS, VERSIONS
from tests.apps.counter import counter


def rows(client: Garrison, table: Any = EVENTS) -> int:
    with client.db.session() as s:
        return int(s.execute(select(func.count()).select_from(table)).scalar_one())


def written(client: Garrison) -> tuple[int, int]:
    """(events, streams): both must stay 0 after a refused ingest."""
    return rows(client, EVENTS), rows(client, STREAMS)


INVALID: list[tuple[str, Callable[[Garrison], object], str]] = [
    ("empty name", lambda c: c.ingest("", "k1", {"n": 1}), "name"),
    ("name not a string", lambda c: c.ingest(7, "k1", {"n": 1}), "name"),  # type: ignore[arg-type]
    ("empty key", lambda c: c.ingest("add", "", {"n": 1}), "key"),
    ("whitespace key", lambda c: c.ingest("add", " \t ", {"n": 1}), "key"),
    ("integer key", lambda c: c.ingest("add", 42, {"n": 1}), "key"),  # type: ignore[arg-type]
    ("None key", lambda c: c.ingest("add", None, {"n": 1}), "key"),  # type: ignore[arg-type]
    ("key too long", lambda c: c.ingest("add", "k" * 300, {"n": 1}), "key"),
    ("data a list", lambda c: c.ingest("add", "k1", [1, 2]), "data"),  # type: ignore[arg-type]
    ("data a string", lambda c: c.ingest("add", "k1", "n=1"), "data"),  # type: ignore[arg-type]
    ("data with a set", lambda c: c.ingest("add", "k1", {"n": {1, 2}}), "data"),
    ("data with NaN", lambda c: c.ingest("add", "k1", {"n": float("nan")}), "data"),
    ("data with an object", lambda c: c.ingest("add", "k1", {"n": object()}), "data"),
    ("whitespace tenant", lambda c: c.ingest("add", "k1", {"n": 1}, tenant="  "), "tenant"),
    ("tenant not a string", lambda c: c.ingest("add", "k1", {"n": 1}, tenant=5), "tenant"),  # type: ignore[arg-type]
    ("empty idempotency key", lambda c: c.ingest("add", "k1", {"n": 1}, idempotency_key=""), "idempotency_key"),
    ("send with an empty key", lambda c: counter.send("add", "", {"n": 1}, client=c), "key"),
    ("send with an unknown reducer", lambda c: counter.send("nope", "k1", {"n": 1}, client=c), "reducer"),
    (
        "ingest_many item 3 without a key",
        lambda c: c.ingest_many(
            [{"name": "add", "key": f"k{i}", "data": {"n": i}, "target": "counter"} for i in range(3)]
            + [{"name": "add", "key": "", "data": {"n": 3}}]
        ),
        "events[3].key",
    ),
    (
        "ingest_many item 1 with list data",
        lambda c: c.ingest_many([{"name": "add", "key": "k1"}, {"name": "add", "key": "k2", "data": [1]}]),
        "events[1].data",
    ),
    ("ingest_many item not a mapping", lambda c: c.ingest_many([{"name": "add", "key": "k1"}, "add"]), "events[1]"),
    (
        "ingest_many item with an unknown field",
        lambda c: c.ingest_many([{"name": "add", "key": "k1", "colour": "red"}]),
        "events[0].colour",
    ),
]


@pytest.mark.parametrize(("case", "call", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_each_invalid_argument_is_refused_with_its_field_and_writes_nothing(
    offline: Garrison, case: str, call: Callable[[Garrison], object], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        call(offline)
    assert info.value.field == field, case
    assert field.split(".")[-1].split("[")[0] in str(info.value)
    assert written(offline) == (0, 0)
    assert Runner(offline).run_pending() == 0


def test_an_empty_tenant_is_refused_rather_than_written_to_the_default_tenant(offline: Garrison) -> None:
    with pytest.raises(ValidationError) as info:
        offline.ingest("add", "k1", {"n": 1}, tenant="", target="counter")
    assert info.value.field == "tenant"
    assert written(offline) == (0, 0)


def test_a_payload_over_the_limit_is_refused_with_its_size_and_writes_nothing(
    backend: str, settings_for: Callable[..., Settings]
) -> None:
    client = Garrison(settings_for(backend, max_payload_bytes=100), publisher=NullPublisher())
    try:
        client.ingest("add", "k1", {"text": "x" * 80}, target="counter")  # just under the limit
        with pytest.raises(PayloadTooLarge) as info:
            client.ingest("add", "k2", {"text": "x" * 100}, target="counter")
        assert info.value.field == "data"
        assert info.value.limit == 100 and info.value.size > 100
        with pytest.raises(PayloadTooLarge) as many:
            client.ingest_many([{"name": "add", "key": "k3"}, {"name": "add", "key": "k4", "data": {"t": "y" * 200}}])
        assert many.value.field == "events[1].data"
        assert written(client) == (1, 1)
    finally:
        client.db.dispose()


def test_ingest_many_is_all_or_nothing_even_when_the_database_refuses_a_row_half_way(offline: Garrison) -> None:
    # A row that already holds seq 1 of key "clash" without a stream row: the batch's insert of
    # "clash" seq 1 violates the unique (tenant, key, seq) after "first" and "second" were written.
    with offline.db.session() as s:
        s.execute(insert(EVENTS).values(
            tenant=offline.settings.tenant, key="clash", seq=1, name="add", data={}, created_at=offline.clock.now()
        ))
    before = written(offline)
    batch = [
        {"name": "add", "key": "first", "data": {"n": 1}, "target": "counter"},
        {"name": "add", "key": "second", "data": {"n": 1}, "target": "counter"},
        {"name": "add", "key": "clash", "data": {"n": 1}, "target": "counter"},
    ]
    with pytest.raises(Exception) as info:
        offline.ingest_many(batch)
    assert "unique" in str(info.value).lower() or "integrity" in type(info.value).__name__.lower()
    assert written(offline) == before
    assert offline.state("counter", "first") is None

    # Without the clash, the same batch is stored whole, one sequence per key.
    stored = offline.ingest_many(batch[:2])
    assert [(e.key, e.seq) for e in stored] == [("first", 1), ("second", 1)]
    assert Runner(offline).run_pending() == 2


def test_the_same_idempotency_key_twice_returns_the_first_event_and_applies_once(offline: Garrison) -> None:
    first = counter.send("add", "k1", {"n": 1}, idempotency_key="order-7", client=offline)
    again = counter.send("add", "k1", {"n": 2}, idempotency_key="order-7", client=offline)
    assert not first.duplicate
    assert again.duplicate and again.id == first.id and again.seq == first.seq and again.data == {"n": 1}
    in_batch = offline.ingest_many([
        {"name": "add", "key": "k1", "data": {"n": 3}, "target": "counter", "idempotency_key": "order-7"},
        {"name": "add", "key": "k1", "data": {"n": 4}, "target": "counter", "idempotency_key": "order-8"},
        {"name": "add", "key": "k1", "data": {"n": 5}, "target": "counter", "idempotency_key": "order-8"},
    ])
    assert [e.duplicate for e in in_batch] == [True, False, True]
    assert in_batch[0].id == first.id and in_batch[1].id == in_batch[2].id
    assert written(offline) == (2, 1)

    assert Runner(offline).run_pending() == 2
    assert offline.state("counter", "k1") == {"count": 2, "applied": [["", 1], ["", 4]]}
    assert rows(offline, VERSIONS) == 2


def test_concurrent_ingests_with_one_idempotency_key_store_exactly_one_event(offline: Garrison) -> None:
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[Any] = [None] * threads_count

    def ingest(i: int) -> None:
        barrier.wait()
        try:
            results[i] = counter.send("add", "k1", {"n": i}, idempotency_key="once", client=offline)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert written(offline) == (1, 1)
    with offline.db.session() as s:
        assert s.execute(select(STREAMS.c.last_seq)).scalar_one() == 1  # no sequence number lost to a loser
    assert Runner(offline).run_pending() == 1
    assert offline.state("counter", "k1")["count"] == 1  # type: ignore[index]
