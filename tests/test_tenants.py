"""Tenants are real (guarantee 8): two tenants with the same key never see or change each other's entity through
any public call, each gets its own preferences, and ids of one tenant's rows mean nothing in another's."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from garrison.client import Garrison
from garrison.core.runner import Runner
from garrison.errors import NotFound
from garrison.models import EFFECTS, EVENTS, FAILURES, STREAMS, VERSIONS
from garrison.ops.inspect import inspect_key
from tests.apps.counter import counter

ACME, GLOBEX = "acme", "globex"
KEY = "shared"


def by_tenant(client: Garrison, table: Any, *columns: Any) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with client.db.session() as s:
        for row in s.execute(select(table.c.tenant, *columns).order_by(table.c.tenant, *columns)):
            out.setdefault(row[0], []).append(tuple(row[1:]))
    return out


def test_the_same_key_in_two_tenants_is_two_entities_that_never_touch(offline: Garrison) -> None:
    runner = Runner(offline)
    a1 = counter.send("add", KEY, {"source": "a", "n": 1}, tenant=ACME, client=offline)
    a2 = offline.ingest("add", KEY, {"source": "a", "n": 2}, tenant=ACME, target="counter")
    g1 = counter.send("add", KEY, {"source": "g", "n": 1}, tenant=GLOBEX, client=offline)
    # Each tenant has its own sequence for the key.
    assert (a1.seq, a2.seq, g1.seq) == (1, 2, 1)
    assert (a1.tenant, a2.tenant, g1.tenant) == (ACME, ACME, GLOBEX)

    # What inspection shows of a tenant's key is that tenant's alone.
    pending = inspect_key(offline, KEY, tenant=GLOBEX)
    assert (pending.tenant, pending.last_seq, pending.pending_count) == (GLOBEX, 1, 1)
    assert [p.data["source"] for p in pending.pending] == ["g"]
    assert [p.data["source"] for p in inspect_key(offline, KEY, tenant=ACME).pending] == ["a", "a"]

    # Running one tenant's work applies nothing of the other's.
    assert runner.run_pending(GLOBEX) == 1
    assert offline.state("counter", KEY, tenant=ACME) is None
    assert offline.state("counter", KEY, tenant=GLOBEX) == {"count": 1, "applied": [["g", 1]]}
    assert runner.run_pending(ACME) == 2
    assert runner.run_pending(GLOBEX) == 0
    # Per-tenant preferences: counter's step is 10 for acme, 1 elsewhere.
    assert offline.state("counter", KEY, tenant=ACME) == {"count": 20, "applied": [["a", 1], ["a", 2]]}
    assert offline.state("counter", KEY, tenant=GLOBEX) == {"count": 1, "applied": [["g", 1]]}
    # The default tenant has nothing under that key, and reveals nothing of the others.
    assert offline.state("counter", KEY) is None
    assert offline.view("counter", KEY) is None
    assert runner.run_pending() == 0
    assert offline.run_pending() == 0
    acme = inspect_key(offline, KEY, tenant=ACME)
    assert [e.state for e in acme.entities] == [offline.state("counter", KEY, tenant=ACME)]
    assert {v.data["source"] for v in acme.versions} == {"a"} and acme.versions_total == 2
    assert len(acme.effects) == 2 and acme.pending == []
    assert not inspect_key(offline, KEY).found

    # History, determinism check and replay are per tenant.
    assert by_tenant(offline, VERSIONS, VERSIONS.c.key, VERSIONS.c.version) == {
        ACME: [(KEY, 1), (KEY, 2)], GLOBEX: [(KEY, 1)],
    }
    assert offline.check("counter", KEY, tenant=ACME) == []
    assert offline.check("counter", KEY, tenant=GLOBEX) == []
    assert offline.check("counter", KEY) == []
    acme_replay = offline.replay("counter", KEY, tenant=ACME)
    assert (acme_replay.entities, acme_replay.events, acme_replay.ok) == (1, 2, True)
    globex_replay = offline.replay("counter", KEY, tenant=GLOBEX)
    assert (globex_replay.entities, globex_replay.events, globex_replay.ok) == (1, 1, True)
    default_replay = offline.replay("counter", KEY)
    assert (default_replay.entities, default_replay.events) == (0, 0)
    assert by_tenant(offline, STREAMS, STREAMS.c.key, STREAMS.c.last_seq) == {ACME: [(KEY, 2)], GLOBEX: [(KEY, 1)]}


def test_an_idempotency_key_is_per_tenant(offline: Garrison) -> None:
    a = counter.send("add", KEY, {"n": 1}, tenant=ACME, idempotency_key="order-1", client=offline)
    g = counter.send("add", KEY, {"n": 1}, tenant=GLOBEX, idempotency_key="order-1", client=offline)
    again = counter.send("add", KEY, {"n": 9}, tenant=GLOBEX, idempotency_key="order-1", client=offline)
    assert not a.duplicate and not g.duplicate and a.id != g.id
    assert again.duplicate and again.id == g.id and again.tenant == GLOBEX
    Runner(offline).run_pending(ACME)
    Runner(offline).run_pending(GLOBEX)
    assert offline.state("counter", KEY, tenant=ACME)["count"] == 10  # type: ignore[index]
    assert offline.state("counter", KEY, tenant=GLOBEX)["count"] == 1  # type: ignore[index]


def test_listeners_effects_and_their_sends_stay_in_their_tenant(offline: Garrison) -> None:
    runner = Runner(offline)
    counter.send("add", KEY, {"n": 1}, tenant=ACME, client=offline)
    counter.send("add", KEY, {"n": 1}, tenant=GLOBEX, client=offline)
    runner.run_pending(ACME, effects=False)
    runner.run_pending(GLOBEX, effects=False)
    effects = by_tenant(offline, EFFECTS, EFFECTS.c.id)
    [[acme_effect]], [[globex_effect]] = effects[ACME], effects[GLOBEX]

    # An effect id of one tenant is unknown to another.
    with pytest.raises(NotFound):
        runner.perform_effect(GLOBEX, acme_effect)
    with pytest.raises(NotFound):
        runner.perform_effect(ACME, globex_effect)

    # A chained send from acme's listener lands in acme, with acme's preferences.
    counter.send("add", "chainer", {"n": 1, "chain": True}, tenant=ACME, client=offline)
    runner.run_pending(ACME)
    assert offline.state("counter", "chainer-chained", tenant=ACME) == {"count": 10, "applied": [["chain", 1]]}
    assert offline.state("counter", "chainer-chained", tenant=GLOBEX) is None
    assert offline.state("counter", "chainer-chained") is None
    assert runner.run_pending(GLOBEX, effects=False) == 0
    with offline.db.session() as s:
        globex_effects = s.execute(select(EFFECTS.c.status).where(EFFECTS.c.tenant == GLOBEX)).scalars().all()
    assert globex_effects == ["pending"]  # acme's run performed none of globex's effects
    assert by_tenant(offline, EVENTS, EVENTS.c.key)[GLOBEX] == [(KEY,)]


def test_failures_are_listed_and_retried_only_in_their_own_tenant(offline: Garrison) -> None:
    runner = Runner(offline)
    counter.send("add", KEY, {"n": 1, "boom": True}, tenant=ACME, client=offline)
    counter.send("add", KEY, {"n": 1}, tenant=GLOBEX, client=offline)
    runner.run_pending(ACME)
    runner.run_pending(GLOBEX)
    [[failure_id]] = by_tenant(offline, FAILURES, FAILURES.c.id)[ACME]
    assert offline.failures(tenant=ACME) == [failure_id]
    assert offline.failures(tenant=GLOBEX) == []
    assert offline.failures() == []
    if hasattr(Garrison, "retry"):
        with pytest.raises(NotFound):
            offline.retry(failure_id, tenant=GLOBEX)
        with pytest.raises(NotFound):
            offline.retry(failure_id)
        assert offline.failures(tenant=ACME) == [failure_id]  # untouched by the refused retries
    assert offline.state("counter", KEY, tenant=GLOBEX) == {"count": 1, "applied": [["", 1]]}
    assert offline.state("counter", KEY, tenant=ACME) is None
