"""The test harness itself: waits scale with the machine's load, and parallel workers get their own
database and Redis db."""

from __future__ import annotations

import time

import pytest

from tests import harness


def _time_out(timeout: float) -> float:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="scaled by the machine's load"):
        harness.wait_until(lambda: False, timeout=timeout, interval=0.02)
    return time.monotonic() - started


def test_a_wait_on_a_loaded_machine_lasts_longer_than_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "load_factor", lambda: 1.0)
    idle = _time_out(0.3)
    monkeypatch.setattr(harness, "load_factor", lambda: 4.0)
    loaded = _time_out(0.3)
    assert 0.3 <= idle < 1.0
    assert loaded >= 1.2


def test_a_wait_never_stretches_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "load_factor", lambda: 1000.0)
    assert _time_out(0.1) < 0.1 * harness.MAX_STRETCH + 0.5


def test_each_xdist_worker_gets_a_database_and_a_redis_db_of_its_own() -> None:
    pg, redis = "postgresql://postgres@127.0.0.1:5432/test", "redis://127.0.0.1:6379/15"
    assert harness.worker_urls(pg, redis, None) == (pg, redis)
    assert harness.worker_urls(pg, redis, "gw0") == (pg + "_gw0", "redis://127.0.0.1:6379/15")
    assert harness.worker_urls(pg, redis, "gw3") == (pg + "_gw3", "redis://127.0.0.1:6379/12")
    with pytest.raises(RuntimeError, match="fewer workers"):
        harness.worker_urls(pg, "redis://127.0.0.1:6379/2", "gw3")
