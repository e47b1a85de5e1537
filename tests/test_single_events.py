"""Events one at a time, as web apps send them: each request ingests one event, many threads at once. The
workers batch them without being asked (a task takes other pending keys into its transaction, and an
ingest publishes nothing while a task for its key is on its way), and every guarantee holds: each event
applied once, each key's events in ingest order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from garrison import Garrison, Settings
from tests.apps.counter import counter
from tests.harness import WorkerProcess, wait_until

THREADS = 8
KEYS_PER_THREAD = 5
EVENTS_PER_KEY = 15


def _feed(client: Garrison, thread: int, errors: list[BaseException]) -> None:
    try:
        for n in range(1, EVENTS_PER_KEY + 1):
            for k in range(KEYS_PER_THREAD):
                key = f"t{thread}-k{k}"
                counter.send("add", key, {"source": key, "n": n}, client=client)
                time.sleep(0.003)  # paced: a few events a second per user, many users at once
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_single_events_from_many_threads_apply_once_each_in_order_on_real_workers(
    client: Garrison, settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    worker(settings, concurrency=2)
    worker(settings, concurrency=2)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_feed, args=(client, t, errors)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    keys = [f"t{t}-k{k}" for t in range(THREADS) for k in range(KEYS_PER_THREAD)]

    def applied(key: str) -> list[list[object]]:
        state = client.state("counter", key)
        return [] if state is None else list(state["applied"])

    wait_until(lambda: all(len(applied(k)) >= EVENTS_PER_KEY for k in keys), timeout=120,
               what="every single event applied")
    for key in keys:
        assert applied(key) == [[key, n] for n in range(1, EVENTS_PER_KEY + 1)], key
    assert client.engine.pending(settings.tenant, keys) == []

