"""A real worker process applies ingested events; state, history and listeners follow casern."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from garrison.client import Garrison
from garrison.config import Settings
from garrison.models import Entity, StateVersion
from tests.apps.counter import counter
from tests.harness import WorkerProcess, wait_until


def entity_state(client: Garrison, key: str, automation: str = "counter") -> object:
    with client.db.session() as s:
        row = s.execute(
            select(Entity.state).where(
                Entity.tenant == client.settings.tenant, Entity.key == key, Entity.automation == automation
            )
        ).first()
    return None if row is None else row[0]


def test_a_worker_applies_events_and_runs_listeners_with_their_own_transition(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "listener.jsonl"
    worker(settings, env={"GARRISON_TEST_LISTENER_LOG": str(log)})
    for n in range(1, 6):
        counter.send("add", "k1", {"source": "t", "n": n}, client=client)
    counter.send("same", "k1", {}, client=client)

    wait_until(lambda: (entity_state(client, "k1") or {}).get("count") == 5, what="five adds applied")
    assert entity_state(client, "k1") == {"count": 5, "applied": [["t", n] for n in range(1, 6)]}
    with client.db.session() as s:
        versions = s.execute(
            select(StateVersion.version, StateVersion.message).where(StateVersion.key == "k1")
            .order_by(StateVersion.version)
        ).all()
    assert [tuple(v) for v in versions] == [(n, "add") for n in range(1, 6)]

    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 5 and log.read_text(),
                       what="five listener calls")
    calls = sorted((json.loads(line) for line in lines.splitlines()), key=lambda c: c["version"])
    for call in calls:
        assert call["current"]["count"] == call["version"]
        assert (call["prev"] or {"count": 0})["count"] == call["version"] - 1
        assert call["data"]["n"] == call["version"]
    assert len({c["idempotency_key"] for c in calls}) == 5
