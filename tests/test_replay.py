"""Replay rebuilds stored states from the log exactly and calls no listener; check finds a reducer
that no longer reproduces its history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from garrison.automations.machine import Machine
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from tests.apps.counter import counter


def test_replay_of_a_thousand_events_reproduces_every_state_and_calls_no_listener(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Garrison(settings, publisher=NullPublisher())
    client.ingest_many(
        [{"name": "add", "key": f"k{i % 50}", "target": "counter", "data": {"source": "r", "n": i}}
         for i in range(1000)]
    )
    client.ingest("same", "k1", {}, target="counter")
    client.ingest("add", "k2", {"boom": True, "n": -1}, target="counter")
    Runner(client).run_pending(effects=False)

    log = tmp_path / "listener.jsonl"
    monkeypatch.setenv("GARRISON_TEST_LISTENER_LOG", str(log))
    report = client.replay("counter")
    assert report.ok, report.mismatches[:3]
    assert (report.entities, report.events) == (50, 1002)
    assert not log.exists()
    assert client.state("counter", "k7")["applied"] == [["r", n] for n in range(7, 1000, 50)]


def test_replay_reports_a_key_whose_stored_state_was_changed_behind_its_back(settings: Settings) -> None:
    client = Garrison(settings, publisher=NullPublisher())
    for n in range(3):
        counter.send("add", "k1", {"n": n}, client=client)
        counter.send("add", "k2", {"n": n}, client=client)
    Runner(client).run_pending(effects=False)
    from sqlalchemy import update

    from garrison.models import Entity

    with client.db.session() as s:
        s.execute(update(Entity).where(Entity.tenant == settings.tenant, Entity.key == "k2").values(state={"x": 1}))
    report = client.replay("counter")
    assert [(m.key, m.stored) for m in report.mismatches] == [("k2", {"x": 1})]
    assert report.mismatches[0].replayed["count"] == 3


def test_check_proves_a_pure_reducer_deterministic_and_catches_one_that_is_not(settings: Settings) -> None:
    calls: list[int] = []
    clocky = Machine("clocky")

    @clocky.reducer
    def stamp(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
        calls.append(1)
        return {"n": data["n"], "calls": len(calls)}

    client = Garrison(settings, automations=[counter, clocky], publisher=NullPublisher())
    for n in range(4):
        counter.send("add", "k", {"n": n}, client=client)
        clocky.send("stamp", "k", {"n": n}, client=client)
    Runner(client).run_pending(effects=False)

    assert client.check("counter", "k") == []
    mismatches = client.check("clocky", "k")
    assert [m.version for m in mismatches] == [1, 2, 3, 4]
    assert json.dumps(mismatches[0].stored) != json.dumps(mismatches[0].replayed)
