"""Reads never wait for the write lock: state, inspect, stats, runs and node views answer while an engine
batch holds it (on SQLite every writer takes the database's write lock with ``BEGIN IMMEDIATE``; a read
is a deferred transaction that never asks for it). Writes still take it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from garrison.automations.machine import Machine
from garrison.automations.nodes import Nodes
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.ops.inspect import inspect_key
from garrison.ops.stats import collect_stats
from tests.harness import wait_until

release = threading.Event()
entered = threading.Event()
slow = Machine("slow")


@slow.reducer
def hold(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    """Counts; with ``hold`` it waits inside the engine's transaction (holding the write lock on SQLite)."""
    if data.get("hold"):
        entered.set()
        assert release.wait(120), "the test never released the engine"
    return {"count": (state or {"count": 0})["count"] + 1}


notes = Nodes("notes")
pad = notes.node("pad", initial={"text": ""})


@pytest.fixture
def client(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Garrison]:
    release.clear()
    entered.clear()
    # A short busy timeout: a read that did wait for the lock would fail within a second, not hang.
    c = Garrison(settings_for(backend, sqlite_busy_timeout=1.0), automations=[slow, notes], publisher=NullPublisher())
    yield c
    release.set()
    c.db.dispose()


def test_reads_answer_from_the_last_commit_while_an_engine_batch_holds_the_write_lock(client: Garrison) -> None:
    slow.send("hold", "k", {}, client=client)
    pad.state.set({"text": "committed"}, client=client)
    client.run_pending()
    assert client.state("slow", "k") == {"count": 1}

    slow.send("hold", "k", {"hold": True}, client=client)
    batch = threading.Thread(target=client.engine.process, args=(client.settings.tenant, ["k"]))
    batch.start()
    try:
        wait_until(entered.is_set, timeout=30, what="the engine batch to hold its transaction open")
        assert client.state("slow", "k") == {"count": 1}               # the last commit, not the batch's
        assert client.state("slow", "k", version=1) == {"count": 1}
        report = inspect_key(client, "k")
        assert (report.processed_seq, report.pending_count) == (1, 1)
        assert collect_stats(client).pending_messages == 1
        assert client.runs() == []
        assert pad.state.get("text", client=client) == "committed"
        assert notes["pad"].views(client=client)["pad"].get() is None  # a view of itself, read all the same
    finally:
        release.set()
        batch.join(60)
    assert client.state("slow", "k") == {"count": 2}


def test_on_sqlite_a_writer_still_waits_for_the_write_lock_a_reader_does_not(
    backend: str, client: Garrison
) -> None:
    if backend != "sqlite":
        pytest.skip("the write lock is SQLite's; PostgreSQL locks rows")
    slow.send("hold", "k", {}, client=client)
    client.run_pending()
    holder = sqlite3.connect(client.settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE garrison_entities SET state = '{\"count\": 99}'")   # uncommitted
    try:
        assert client.state("slow", "k") == {"count": 1}
        with pytest.raises(OperationalError, match="database is locked"):
            slow.send("hold", "k", {}, client=client)                   # a write waits, then gives up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
