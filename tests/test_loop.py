"""Update loops (go-state): init once, commands fed back in order, nil ignored, snapshots on success."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from garrison.models import Failure
from tests.apps.loops import cart
from tests.harness import WorkerProcess, wait_until


def offline_client(settings: Settings) -> Garrison:
    return Garrison(settings, automations=[cart], publisher=NullPublisher())


def test_commands_feed_their_messages_back_into_the_loop(settings: Settings) -> None:
    client = offline_client(settings)
    client.ingest("cart/add", "u1", {"sku": "apple"})
    client.ingest("cart/add", "u1", {"sku": "kiwi"})
    Runner(client).run_pending()
    state = client.state("cart", "u1")
    assert state == {"items": ["apple", "kiwi"], "total": 9, "inits": 1}
    assert client.view("cart", "u1") == "2 items, total 9"


def test_a_failed_update_stores_no_snapshot_and_is_recorded(settings: Settings) -> None:
    client = offline_client(settings)
    client.ingest("cart/add", "u1", {"sku": "fig"})
    Runner(client).run_pending()
    before = client.state("cart", "u1")
    client.ingest("explode", "u1", {}, target="cart")
    client.ingest("cart/add", "u1", {"sku": "plum"})
    Runner(client).run_pending()
    assert client.state("cart", "u1") == {"items": ["fig", "plum"], "total": 7, "inits": 1}
    assert before == {"items": ["fig"], "total": 3, "inits": 1}
    with client.db.session() as s:
        failures = s.execute(
            select(Failure.automation, Failure.message, Failure.error_type).where(Failure.tenant == settings.tenant)
        ).all()
    assert [tuple(f) for f in failures] == [("cart", "explode", "RuntimeError")]


def test_replay_reproduces_the_model_and_runs_no_command(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = offline_client(settings)
    for sku in ["a", "bb", "ccc"]:
        client.ingest("cart/add", "u2", {"sku": sku})
    Runner(client).run_pending()
    log = tmp_path / "commands.log"
    monkeypatch.setenv("GARRISON_TEST_COMMAND_LOG", str(log))
    report = client.replay("cart")
    assert report.ok and report.entities == 1 and report.events == 6
    assert not log.exists()


def test_a_real_worker_runs_the_commands_of_an_update_loop(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=("tests.apps.loops",))
    log = tmp_path / "commands.log"
    worker(settings, env={"GARRISON_TEST_COMMAND_LOG": str(log)})
    client = Garrison(settings)
    client.ingest("cart/add", "u3", {"sku": "pear"})
    client.ingest("cart/add", "u3", {"sku": "melon"})
    wait_until(lambda: (client.state("cart", "u3") or {}).get("total") == 9, what="both prices applied")
    assert sorted(log.read_text().split()) == ["u3:melon", "u3:pear"]
