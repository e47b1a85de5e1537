"""The change feed (``client.follow``, ``garrison follow``, ``GET /follow``): every stored version once, in
order per entity, resumable from a cursor. The hard case is guarantee 2's: a transaction that began before
others but commits after them must not be skipped by a reader that already passed the others."""

from __future__ import annotations

import json
import random
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from garrison.automations.machine import Machine
from garrison.cli import cli
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.feed import Change
from garrison.core.publisher import NullPublisher
from garrison.errors import ValidationError
from garrison.http import create_app
from garrison.models import VERSIONS
from tests.harness import WorkerProcess, child_env, wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette asks for httpx2; httpx 0.28 works
    from starlette.testclient import TestClient

gate = threading.Event()
inside = threading.Event()
late = Machine("late")


@late.reducer
def step(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    """Counts; with ``hold`` it waits inside the engine's transaction, which then commits after others."""
    if data.get("hold"):
        inside.set()
        assert gate.wait(120), "the test never opened the gate"
    return {"n": (state or {"n": 0})["n"] + 1}


@pytest.fixture
def offline(settings: Settings) -> Iterator[Garrison]:
    gate.clear()
    inside.clear()
    c = Garrison(settings, automations=[late], publisher=NullPublisher())
    yield c
    gate.set()
    c.db.dispose()


def add(client: Garrison, key: str, n: int) -> None:
    client.ingest("add", key, {"n": n}, target="counter")


def stored(client: Garrison) -> list[tuple[str, str, int]]:
    with client.db.session() as s:
        rows = s.execute(select(VERSIONS.c.automation, VERSIONS.c.key, VERSIONS.c.version)
                         .where(VERSIONS.c.tenant == client.settings.tenant)).all()
    return sorted((r.automation, r.key, r.version) for r in rows)


def ids(changes: list[Change]) -> list[tuple[str, str, int]]:
    return [(c.automation, c.key, c.version) for c in changes]


def test_follow_gives_each_transition_with_prev_current_and_what_produced_it(offline: Garrison) -> None:
    add(offline, "k1", 1)
    add(offline, "k1", 2)
    offline.run_pending()

    first, second = list(offline.follow(wait=False))

    assert (first.key, first.version, first.prev, first.message, first.data) == ("k1", 1, None, "add", {"n": 1})
    assert first.current == {"count": 1, "applied": [["", 1]]}
    assert (second.version, second.prev, second.current["count"]) == (2, first.current, 2)
    assert second.event_id is not None and second.seq == 2 and second.tenant == offline.settings.tenant
    assert json.loads(json.dumps(second.to_json()))["cursor"] == second.cursor


def test_follow_resumes_after_a_cursor_filters_by_automation_and_starts_now_on_request(offline: Garrison) -> None:
    add(offline, "k1", 1)
    late.send("step", "k2", {}, client=offline)
    offline.run_pending()
    feed = offline.follow(wait=False)
    assert ids(list(feed)) == [("counter", "k1", 1), ("late", "k2", 1)]
    resume = feed.cursor
    now = offline.follow(since="now", wait=False)
    assert list(now) == [] and now.cursor is not None

    add(offline, "k1", 2)
    late.send("step", "k2", {}, client=offline)
    offline.run_pending()

    assert ids(list(offline.follow(since=resume, wait=False))) == [("counter", "k1", 2), ("late", "k2", 2)]
    assert ids(list(offline.follow(since=now.cursor, wait=False))) == [("counter", "k1", 2), ("late", "k2", 2)]
    assert ids(list(offline.follow("late", wait=False))) == [("late", "k2", 1), ("late", "k2", 2)]
    everything = offline.follow(wait=False)
    assert len(list(everything)) == 4 and list(offline.follow(since=everything.cursor, wait=False)) == []
    with pytest.raises(ValidationError) as refused:
        offline.follow(since="not-a-cursor")
    assert refused.value.field == "since"


def test_a_transaction_that_commits_after_later_ones_is_not_skipped(backend: str, offline: Garrison) -> None:
    """The slow batch takes its transaction id first and commits last. On PostgreSQL the others commit
    meanwhile with higher ids; a reader at "id > last" would pass them and skip the slow one forever."""
    tenant = offline.settings.tenant
    start = offline.follow(since="now", wait=False).cursor
    late.send("step", "slow", {"hold": True}, client=offline)
    batch = threading.Thread(target=offline.engine.process, args=(tenant, ["slow"]))
    batch.start()
    wait_until(inside.is_set, timeout=30, what="the slow batch to hold its transaction open")

    def others() -> None:
        for key in ("a", "b", "c"):
            late.send("step", key, {}, client=offline)  # on SQLite: waits for the slow batch's write lock
            offline.engine.process(tenant, [key])

    writer = threading.Thread(target=others)
    writer.start()
    if backend == "postgres":
        wait_until(lambda: offline.state("late", "c") is not None, what="the later transactions to commit")
    feed = offline.follow(since=start)
    early = feed.next_batch(timeout=0.5)
    assert early == []  # nothing may be handed out while an older writing transaction is still open

    gate.set()
    batch.join(60)
    writer.join(60)
    rest = list(offline.follow(since=feed.cursor, wait=False))
    assert sorted(ids(rest)) == [("late", k, 1) for k in ("a", "b", "c", "slow")]


def test_followers_that_reconnect_all_the_time_miss_and_repeat_nothing_under_concurrent_writers(
    settings: Settings, worker: Callable[..., WorkerProcess]
) -> None:
    """A worker (two processes) applies events from three ingesting threads, while the same threads run
    batches of overlapping key sets in-process (so transactions commit out of id order). A follower that
    reconnects every few changes gets every version exactly once, each entity's in version order."""
    worker(settings, concurrency=2)
    client = Garrison(settings)
    keys = [f"k{i}" for i in range(12)]
    rng = random.Random(7)
    done = threading.Event()

    def write(thread: int) -> None:
        for i in range(40):
            add(client, rng.choice(keys), thread * 100 + i)
            if i % 3 == 0:
                client.engine.process(client.settings.tenant, rng.sample(keys, 4))

    writers = [threading.Thread(target=write, args=(t,)) for t in range(3)]
    for t in writers:
        t.start()
    got: list[Change] = []
    cursor: str | None = None
    reconnects = 0

    def everything_applied() -> bool:
        return done.is_set() and client.engine.pending(client.settings.tenant, keys) == []

    def follow_some() -> bool:
        nonlocal cursor, reconnects
        with client.follow(since=cursor, idle_timeout=0.2) as feed:
            for change in feed:
                got.append(change)
                if rng.random() < 0.3:
                    break
            cursor = feed.cursor
        reconnects += 1
        return everything_applied() and len(got) >= len(stored(client))

    for t in writers:
        threading.Thread(target=lambda t=t: (t.join(), done.set() if all(not w.is_alive() for w in writers)
                                             else None)).start()
    wait_until(follow_some, timeout=120, interval=0.01, what="the follower to catch up with every version")

    delivered = ids(got)
    assert len(delivered) == len(set(delivered)), "a version was handed out twice"
    assert sorted(delivered) == stored(client) and len(delivered) == 120
    for key in keys:
        versions = [v for a, k, v in delivered if k == key]
        assert versions == list(range(1, len(versions) + 1)), f"{key}: {versions}"
    assert reconnects > 20


def test_get_follow_streams_server_sent_events_resumable_with_last_event_id(
    backend: str, settings_for: Callable[..., Settings]
) -> None:
    key = secrets.token_hex(16)
    settings = settings_for(backend, api_keys=(f"acme:{key}",))
    client = Garrison(settings, publisher=NullPublisher())
    for n in (1, 2, 3):
        client.ingest("add", "k", {"n": n}, target="counter", tenant="acme")
    client.ingest("add", "other", {"n": 1}, target="counter")  # the default tenant: never shown to acme
    client.run_pending("acme")
    client.run_pending()
    auth = {"Authorization": f"Bearer {key}"}

    def events(http: TestClient, **params: str) -> list[dict[str, Any]]:
        headers = {**auth, **({"Last-Event-ID": params.pop("last")} if "last" in params else {})}
        with http.stream("GET", "/follow", params={"wait": "false", **params}, headers=headers) as answer:
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
            blocks = "".join(answer.iter_text()).strip().split("\n\n")
        out = []
        for block in filter(None, blocks):
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            assert fields["event"] == "change" and json.loads(fields["data"])["cursor"] == fields["id"]
            out.append({**json.loads(fields["data"]), "id": fields["id"]})
        return out

    with TestClient(create_app(client)) as http:
        first = events(http)
        assert [(e["key"], e["version"], e["tenant"]) for e in first] == [("k", 1, "acme"), ("k", 2, "acme"),
                                                                          ("k", 3, "acme")]
        assert [e["version"] for e in events(http, last=first[1]["id"])] == [3]
        assert [e["version"] for e in events(http, since=first[0]["id"])] == [2, 3]
        assert events(http, since="now") == []
        bad = http.get("/follow", params={"since": "nope"}, headers=auth)
        assert bad.status_code == 422 and bad.json()["field"] == "since"
        assert http.get("/follow", params={"wait": "false"}).status_code == 401
    client.db.dispose()


def test_garrison_follow_prints_changes_with_cursors_and_resumes_after_one(offline: Garrison) -> None:
    add(offline, "k1", 1)
    add(offline, "k1", 2)
    offline.run_pending()
    env = child_env(offline.settings)

    shown = CliRunner().invoke(cli, ["follow", "--once", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(c["key"], c["version"]) for c in lines] == [("k1", 1), ("k1", 2)]

    resumed = CliRunner().invoke(cli, ["follow", "counter", "--once", "--since", lines[0]["cursor"]], env=env)
    assert resumed.exit_code == 0, resumed.output
    [line] = resumed.stdout.splitlines()
    assert "counter 'k1' v2 add:" in line and line.endswith(f"[{lines[1]['cursor']}]")
    assert f"garrison follow --since {lines[1]['cursor']}" in resumed.stderr

    bad = CliRunner().invoke(cli, ["follow", "--once", "--since", "x"], env=env)
    assert bad.exit_code == 2 and "(field: since)" in bad.stderr


def test_an_entitys_versions_are_in_version_order_even_when_the_later_one_has_the_older_transaction(
    backend: str, offline: Garrison
) -> None:
    """Transaction B takes its id first, then writes an entity's version 2 after A (a later id) committed
    version 1: a batch of many keys waiting on one key's lock does exactly this. Ordered by raw
    transaction id the feed would give v2 before v1; each version's txid is raised to its predecessor's."""
    if backend != "postgres":
        pytest.skip("SQLite writers are serialized: a later transaction never has the older position")
    from sqlalchemy import insert, text

    from garrison.core import feed, pgbulk

    tenant = offline.settings.tenant
    for write in ("engine", "node set"):
        key = f"k-{write}"
        with offline.db.session() as b:
            older = b.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one()
            add(offline, key, 1)
            offline.run_pending()                                  # A: version 1, a younger transaction id
            row = {"key": key, "automation": "counter", "version": 2, "state": {"count": 2}, "message": "add",
                   "data": {}, "event_id": None, "seq": None}
            if write == "engine":
                pgbulk.versions_insert(b, tenant, [row], offline.clock.now())
            else:
                b.execute(insert(VERSIONS).values(tenant=tenant, created_at=offline.clock.now(), **row,
                                                  txid=feed.txid_expression(tenant, key, "counter", 2)))
        changes = [c for c in offline.follow(wait=False) if c.key == key]
        assert [c.version for c in changes] == [1, 2]
        positions = [feed.decode(c.cursor).txid for c in changes]
        assert positions[1] == positions[0] > older
