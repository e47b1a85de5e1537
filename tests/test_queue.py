"""Two deployments on one Redis (a staging and a production fleet, two teams) each name their queue
(``GARRISON_QUEUE``), so neither steals the other's tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from garrison import Garrison, Settings
from tests.conftest import REDIS_URL, require_services
from tests.harness import WorkerProcess, wait_until


def test_two_deployments_sharing_one_redis_never_take_each_others_tasks(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    require_services()
    blue = settings_for("sqlite", data_dir=tmp_path / "blue", broker_url=REDIS_URL, queue="blue")
    green = settings_for("sqlite", data_dir=tmp_path / "green", broker_url=REDIS_URL, queue="green")
    blue_worker = worker(blue)
    assert "queue 'blue'" in blue_worker.output
    green_client = Garrison(green)
    blue_client = Garrison(blue)
    try:
        green_client.ingest("add", "green-key", {"n": 1}, target="counter")
        blue_client.ingest("add", "blue-key", {"n": 1}, target="counter")
        wait_until(lambda: blue_client.state("counter", "blue-key"), what="blue's event applied by blue")
        assert "green-key" not in blue_worker.output  # green's task waits for a green worker
        worker(green)
        wait_until(lambda: green_client.state("counter", "green-key"), what="green's event applied by green")
    finally:
        green_client.db.dispose()
        blue_client.db.dispose()
