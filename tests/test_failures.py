"""A handler that raises marks that message failed with its traceback, stores nothing for it, and the worker
and every other key go on (guarantee 7); a failure can be retried once the cause is fixed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from garrison.client import Garrison, configure
from garrison.config import Settings
from garrison.models import CURSORS, EFFECTS, FAILURES, VERSIONS
from tests.apps.counter import counter
from tests.apps.flaky import flaky
from tests.harness import WorkerProcess, wait_until


def failures(client: Garrison) -> list[dict[str, Any]]:
    with client.db.session() as s:
        return [dict(r) for r in s.execute(select(FAILURES).order_by(FAILURES.c.id)).mappings()]


def versions(client: Garrison, key: str, automation: str = "counter") -> list[dict[str, Any]]:
    with client.db.session() as s:
        return [
            dict(r)
            for r in s.execute(
                select(VERSIONS.c.version, VERSIONS.c.event_id, VERSIONS.c.data)
                .where(VERSIONS.c.key == key, VERSIONS.c.automation == automation)
                .order_by(VERSIONS.c.version)
            ).mappings()
        ]


def count(client: Garrison, key: str) -> int | None:
    state = client.state("counter", key)
    return None if state is None else int(state["count"])


def test_a_reducer_that_raises_is_recorded_as_failed_and_the_worker_and_other_keys_go_on(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    proc = worker(settings)
    counter.send("add", "k1", {"n": 1}, client=client)
    boom = counter.send("add", "k1", {"n": 2, "boom": True}, client=client)
    counter.send("add", "k2", {"n": 1}, client=client)
    counter.send("add", "k1", {"n": 3}, client=client)

    wait_until(lambda: failures(client) and count(client, "k1") == 2 and count(client, "k2") == 1,
               what="the failure recorded and the other messages applied")

    # The worker is alive and still applies: to the same key and to new keys.
    counter.send("add", "k1", {"n": 4}, client=client)
    counter.send("add", "k3", {"n": 1}, client=client)
    wait_until(lambda: count(client, "k1") == 3 and count(client, "k3") == 1, what="later events applied")
    assert proc.proc.poll() is None

    [failure] = failures(client)
    assert failure["tenant"] == settings.tenant
    assert (failure["automation"], failure["key"], failure["message"]) == ("counter", "k1", "add")
    assert (failure["event_id"], failure["seq"]) == (boom.id, boom.seq) == (boom.id, 2)
    assert failure["status"] == "failed" and failure["retry_event_id"] is None
    assert failure["error_type"] == "ValueError" and "boom for 2" in failure["error"]
    assert "Traceback" in failure["traceback"] and "ValueError: boom for 2" in failure["traceback"]
    assert "in add" in failure["traceback"]  # the reducer's own frame is in it
    assert client.failures() == [failure["id"]]

    # Nothing was stored for the failed message: no version, no state change, no listener effect.
    assert client.state("counter", "k1") == {"count": 3, "applied": [["", 1], ["", 3], ["", 4]]}
    k1 = versions(client, "k1")
    assert [v["version"] for v in k1] == [1, 2, 3]
    assert boom.id not in {v["event_id"] for v in k1}
    with client.db.session() as s:
        payloads = list(s.execute(select(EFFECTS.c.payload).where(EFFECTS.c.key == "k1")).scalars())
        cursor = s.execute(select(CURSORS.c.processed_seq).where(CURSORS.c.key == "k1")).scalar_one()
    assert len(payloads) == 3 and not any(p["data"].get("boom") for p in payloads)
    assert cursor == 4  # past the failed message: it blocks nothing behind it
    # Other keys are untouched by it.
    assert client.state("counter", "k2") == {"count": 1, "applied": [["", 1]]}
    assert [v["version"] for v in versions(client, "k2")] == [1]


@pytest.fixture
def flaky_client(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Garrison]:
    c = Garrison(settings_for(backend, automations=("tests.apps.counter", "tests.apps.flaky")))
    previous = configure(c)
    yield c
    configure(previous)
    c.db.dispose()


def test_a_failed_message_retried_after_its_cause_is_fixed_applies_once_to_the_current_state(
    flaky_client: Garrison, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    if not hasattr(Garrison, "retry"):
        pytest.skip("Garrison.retry is not there yet")
    client = flaky_client
    worker(client.settings)
    blocker = tmp_path / "provider-down"
    blocker.touch()
    failed = flaky.send("charge", "acct", {"n": 1, "blocker": str(blocker)}, client=client)
    flaky.send("charge", "acct", {"n": 2}, client=client)
    wait_until(lambda: failures(client) and client.state("flaky", "acct") == {"charged": [2]},
               what="the first charge failed and the second applied")
    [failure] = failures(client)
    assert failure["event_id"] == failed.id and failure["automation"] == "flaky"

    blocker.unlink()  # the "fix"
    retried = client.retry(failure["id"])
    assert not retried.duplicate and retried.id != failed.id
    assert (retried.name, retried.key, retried.target) == ("charge", "acct", "flaky")
    assert retried.data == failed.data
    assert (retried.idempotency_key or "").startswith(f"garrison/retry:{failure['id']}")

    wait_until(lambda: client.state("flaky", "acct") == {"charged": [2, 1]}, what="the retry applied")
    [after] = failures(client)
    assert after["status"] == "retried" and after["retry_event_id"] == retried.id
    assert client.failures() == []
    stored = versions(client, "acct", automation="flaky")
    assert [v["event_id"] for v in stored] == [stored[0]["event_id"], retried.id]
    assert failed.id not in {v["event_id"] for v in stored}
