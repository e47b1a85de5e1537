"""Celery conventions: JSON only (a pickled message is refused and runs nothing), and task events
carry garrison's readable task names and arguments, which is what Flower shows."""

from __future__ import annotations

import contextlib
import pickle  # only to prove the worker refuses it
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer

from garrison.client import Garrison
from garrison.config import Settings
from garrison.tasks.app import celery_config, create_celery
from tests.apps.counter import counter
from tests.harness import WorkerProcess, wait_until


def test_the_celery_app_accepts_json_only_and_sends_task_events(tmp_path: Any) -> None:
    conf = celery_config(Settings(data_dir=tmp_path))
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == conf["event_serializer"] == "json"
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert "pickle" not in str(conf["beat_scheduler"]).lower()


def test_a_pickled_task_message_is_refused_by_the_worker_and_applies_nothing(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    proc = worker(settings)
    counter.send("add", "before", {"n": 1}, client=client)
    wait_until(lambda: client.state("counter", "before"), what="the worker to work")
    app = create_celery(settings)
    with Connection(settings.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        producer = Producer(conn)
        producer.publish(
            pickle.dumps(((settings.tenant, ["pickled"]), {}, {})),
            routing_key=settings.queue, exchange=Exchange(settings.queue), serializer=None,
            content_type="application/x-python-serialize", content_encoding="binary",
            headers={"task": "garrison.process", "id": "pickled-1", "lang": "py", "argsrepr": "", "kwargsrepr": ""},
            declare=[],
        )
    wait_until(lambda: "ContentDisallowed" in proc.output or "Refusing" in proc.output or "disallowed" in proc.output,
               what="the worker to refuse the pickled message")
    counter.send("add", "after", {"n": 1}, client=client)
    wait_until(lambda: client.state("counter", "after"), what="the worker to go on")


def test_task_events_name_garrison_tasks_and_their_keys(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess]
) -> None:
    settings = settings_for("postgres")
    app = create_celery(settings)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            with contextlib.suppress(TimeoutError):  # no event for 30 s: the test is long over
                receiver.capture(limit=None, timeout=30, wakeup=True)

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    worker(settings)
    client = Garrison(settings)
    counter.send("add", "user-42", {"n": 1}, client=client)
    succeeded = wait_until(
        lambda: [e for e in seen if e.get("type") == "task-succeeded"], timeout=30, what="a task-succeeded event"
    )
    received = [e for e in seen if e.get("type") == "task-received"]
    assert received and received[0]["name"] == "garrison.process"
    assert "user-42" in received[0]["args"] and "tenant=default" in received[0]["args"]
    assert succeeded


@pytest.fixture(autouse=True)
def _no_pickle_in_garrison() -> None:
    """Belt and braces: garrison's own code never mentions pickle."""
    from pathlib import Path

    import garrison

    root = Path(garrison.__file__).parent
    offenders = [p for p in root.rglob("*.py") if "import pickle" in p.read_text()]
    assert offenders == []
