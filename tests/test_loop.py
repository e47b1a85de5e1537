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
from garrison.errors import NotFound
from garrison.models import Failure
from tests.apps.loops import cart, poller
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


# -- starting a loop without a message (go-state's Run) ----------------------------------------------


def test_start_runs_init_and_its_commands_without_any_message(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "commands.log"
    monkeypatch.setenv("GARRISON_TEST_COMMAND_LOG", str(log))
    client = Garrison(settings, automations=[poller], publisher=NullPublisher())
    started = poller.start("feed-1", client=client)
    assert (started.name, started.target, started.idempotency_key) == (
        "garrison/loop.start", "poller", "garrison/loop.start:poller:feed-1")
    assert client.state("poller", "feed-1") is None                  # nothing runs before a worker applies it
    Runner(client).run_pending()
    assert client.state("poller", "feed-1") == {"pages": [1, 2, 3], "inits": 1}
    assert log.read_text().split() == ["feed-1:fetch:1", "feed-1:fetch:2", "feed-1:fetch:3"]
    assert client.state("poller", "feed-1", version=1) == {"pages": [], "inits": 1}   # init's model, stored
    assert client.replay("poller").ok


def test_start_is_idempotent_and_a_no_op_for_a_loop_already_running(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "commands.log"
    monkeypatch.setenv("GARRISON_TEST_COMMAND_LOG", str(log))
    client = Garrison(settings, automations=[poller, cart], publisher=NullPublisher())
    first = poller.start("feed-2", client=client)
    again = poller.start("feed-2", client=client)
    assert again.duplicate and again.id == first.id
    Runner(client).run_pending()
    poller.start("feed-2", client=client, tenant=settings.tenant)
    Runner(client).run_pending()
    assert log.read_text().split() == ["feed-2:fetch:1", "feed-2:fetch:2", "feed-2:fetch:3"]

    client.ingest("cart/add", "u9", {"sku": "fig"})                  # started lazily by its first message
    Runner(client).run_pending()
    cart.start("u9", client=client)
    Runner(client).run_pending()
    assert client.state("cart", "u9") == {"items": ["fig"], "total": 3, "inits": 1}
    with pytest.raises(NotFound, match="it is at version 2"):       # add, priced: the start stored nothing
        client.state("cart", "u9", version=3)


def test_a_real_worker_starts_a_loop_from_a_start_alone(
    settings_for: Callable[..., Settings], backend: str, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    settings = settings_for(backend, automations=("tests.apps.loops",))
    log = tmp_path / "commands.log"
    worker(settings, env={"GARRISON_TEST_COMMAND_LOG": str(log)})
    client = Garrison(settings)
    poller.start("feed-3", client=client)
    wait_until(lambda: (client.state("poller", "feed-3") or {}).get("pages") == [1, 2, 3], what="three pages")
    poller.start("feed-3", client=client)
    client.ingest("poll/noop", "feed-3")                             # a message after the second start
    wait_until(lambda: client.state("poller", "feed-3", version=4) is not None, what="the later message")
    assert log.read_text().split() == ["feed-3:fetch:1", "feed-3:fetch:2", "feed-3:fetch:3"]
