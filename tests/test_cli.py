"""The ``garrison`` command: every command explains itself, ingest refuses bad input in one line naming the
field, inspect shows what is stored for one key of one tenant, retry and replay repair and check it, and
worker and beat run real Celery processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from garrison.cli import cli
from garrison.client import Garrison, configure
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from tests.apps.counter import counter
from tests.apps.flaky import flaky
from tests.harness import ROOT, child_env, wait_until

COMMANDS = [
    [], ["db"], ["db", "init"], ["worker"], ["beat"], ["ingest"], ["inspect"], ["replay"], ["retry"], ["runs"],
    ["cancel"], ["demo"], ["db", "upgrade"], ["serve"], ["pulses"],
]


def run(settings: Settings, *args: str, input: str | None = None) -> Result:
    return CliRunner(env=settings.as_env()).invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "garrison")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


def test_db_init_creates_the_tables_and_ingest_prints_the_stored_event(settings: Settings, tmp_path: Path) -> None:
    empty = Settings(data_dir=tmp_path / "new", automations=("tests.apps.counter",))
    created = run(empty, "db", "init")
    assert created.exit_code == 0, created.output
    assert "garrison tables ready in sqlite:///" in created.stdout
    assert (tmp_path / "new" / "garrison.db").exists()

    first = run(settings, "ingest", "add", "k1", '{"n": 1}', "--target", "counter")
    assert first.exit_code == 0, first.output
    assert "event 1 stored: add for key 'k1' (tenant 'default', seq 1), target counter" in first.stdout
    assert 'data {"n": 1}' in first.stdout

    second = run(settings, "ingest", "add", "k1", "-", "--target", "counter", "--tenant", "acme",
                 "--idempotency-key", "once", "--json", input='{"n": 2}')
    again = run(settings, "ingest", "add", "k1", '{"n": 3}', "--target", "counter", "--tenant", "acme",
                "--idempotency-key", "once", "--json")
    stored, duplicate = json.loads(second.stdout), json.loads(again.stdout)
    assert (stored["tenant"], stored["seq"], stored["data"], stored["duplicate"]) == ("acme", 1, {"n": 2}, False)
    assert (duplicate["id"], duplicate["data"], duplicate["duplicate"]) == (stored["id"], {"n": 2}, True)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["add", "k1", "{not json"], "data"),
        (["add", "k1", "[1, 2]"], "data"),
        (["add", " ", "{}"], "key"),
        (["add", "k1", "{}", "--tenant", "x" * 65], "tenant"),
        (["nope", "k1", "{}", "--target", "counter"], "reducer"),
        (["add", "k1", "{}", "--target", "nobody"], "target"),
    ],
)
def test_ingest_refuses_bad_input_in_one_line_that_names_the_field_and_exits_2(
    settings: Settings, args: list[str], field: str
) -> None:
    result = run(settings, "ingest", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith(f"(field: {field})")
    assert Garrison(settings, publisher=NullPublisher()).failures() == []


def test_inspect_shows_state_history_pending_messages_failures_and_effects(offline: Garrison) -> None:
    settings = offline.settings
    for n in (1, 2):
        counter.send("add", "k1", {"source": "cli", "n": n}, client=offline)
    boom = counter.send("add", "k1", {"n": 3, "boom": True}, client=offline)
    Runner(offline).run_pending()
    waiting = counter.send("add", "k1", {"n": 4}, client=offline)

    result = run(settings, "inspect", "k1")
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert "key 'k1'  tenant 'default'\n4 messages ingested, applied up to seq 3, 1 pending" in page
    state_line = next(line for line in page.splitlines() if line.startswith("  counter     2"))
    assert '{"applied":[["cli",1],["cli",2]],"count":2}' in state_line
    assert "History (last 2 of 2 versions)" in page
    assert f"  4    {waiting.id}      add   counter" in page
    assert "Failures\n  ID  AUTOMATION  SEQ  EVENT" in page
    [failure_id] = offline.failures()
    assert "ValueError: boom for 3" in page and f"retry a failure with: garrison retry {failure_id}" in page
    assert page.count("listener  record  ") == 2 and "done" in page

    report = json.loads(run(settings, "inspect", "k1", "--json").stdout)
    assert [e["automation"] for e in report["entities"]] == ["counter"]
    assert [v["version"] for v in report["versions"]] == [1, 2]
    assert [p["seq"] for p in report["pending"]] == [4] and report["pending_count"] == 1
    [failure] = report["failures"]
    assert (failure["event_id"], failure["status"], failure["error_type"]) == (boom.id, "failed", "ValueError")
    assert "Traceback" in failure["traceback"]
    assert {(e["kind"], e["name"], e["status"]) for e in report["effects"]} == {("listener", "record", "done")}


def test_inspect_shows_only_the_asked_tenants_rows_and_exits_1_for_an_unknown_key(offline: Garrison) -> None:
    counter.send("add", "shared", {"source": "acme", "n": 1}, tenant="acme", client=offline)
    counter.send("add", "shared", {"source": "globex", "n": 1}, tenant="globex", client=offline)
    Runner(offline).run_pending("acme")

    acme = run(offline.settings, "inspect", "shared", "--tenant", "acme")
    assert acme.exit_code == 0
    assert '"acme"' in acme.stdout and "globex" not in acme.stdout
    globex = json.loads(run(offline.settings, "inspect", "shared", "--tenant", "globex", "--json").stdout)
    assert globex["entities"] == [] and [p["data"]["source"] for p in globex["pending"]] == ["globex"]

    for args in (["shared"], ["nobody", "--tenant", "acme"]):
        missing = run(offline.settings, "inspect", *args)
        assert missing.exit_code == 1
        assert missing.stdout.startswith("nothing stored for key")


@pytest.fixture
def flaky_client(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Garrison]:
    c = Garrison(settings_for(backend, automations=("tests.apps.counter", "tests.apps.flaky")),
                 publisher=NullPublisher())
    previous = configure(c)
    yield c
    configure(previous)
    c.db.dispose()


def test_retry_applies_failed_messages_again_once_their_cause_is_fixed(
    flaky_client: Garrison, tmp_path: Path
) -> None:
    client, settings = flaky_client, flaky_client.settings
    blocker = tmp_path / "provider-down"
    blocker.touch()
    for n, key in ((1, "a"), (2, "b"), (3, "a")):
        flaky.send("charge", key, {"n": n, "blocker": str(blocker)}, client=client)
    counter.send("add", "a", {"boom": True}, client=client)
    Runner(client).run_pending()
    first, second, third = client.failures(automation="flaky")
    [other] = client.failures(automation="counter")

    nothing = run(settings, "retry")
    assert nothing.exit_code == 2 and "FAILURE_ID or --all" in nothing.stderr
    blocker.unlink()
    one = run(settings, "retry", str(first))
    assert one.exit_code == 0, one.output
    assert one.stdout.startswith(f"failure {first} retried as event ")
    assert run(settings, "retry", str(first)).exit_code == 1
    assert run(settings, "retry", "999").exit_code == 1

    rest = run(settings, "retry", "--all", "--automation", "flaky")
    assert rest.exit_code == 0
    assert [line.split()[1] for line in rest.stdout.splitlines()] == [str(second), str(third)]
    Runner(client).run_pending()
    assert client.state("flaky", "a") == {"charged": [1, 3]}
    assert client.state("flaky", "b") == {"charged": [2]}
    assert client.failures() == [other]


def test_replay_prints_what_it_checked_and_exits_1_on_a_mismatch(offline: Garrison) -> None:
    for n in range(3):
        counter.send("add", "k1", {"n": n}, client=offline)
        counter.send("add", "k2", {"n": n}, client=offline)
    Runner(offline).run_pending()

    clean = run(offline.settings, "replay", "--automation", "counter")
    assert clean.exit_code == 0, clean.output
    assert clean.stdout == "checked 2 entities, 6 events: every stored state reproduced\n"
    history = run(offline.settings, "replay", "--key", "k1", "--versions")
    assert history.exit_code == 0
    assert "version history of counter at 'k1': every version reproduced" in history.stdout

    from sqlalchemy import update

    from garrison.models import ENTITIES

    with offline.db.session() as s:
        s.execute(update(ENTITIES).where(ENTITIES.c.tenant == offline.settings.tenant, ENTITIES.c.key == "k2")
                  .values(state={"count": 99}))
    broken = run(offline.settings, "replay")
    assert broken.exit_code == 1
    assert broken.stdout.splitlines()[0] == "checked 2 entities, 6 events: 1 mismatched"
    assert broken.stdout.splitlines()[1].startswith("""  mismatch counter 'k2': stored {"count":99}  replayed""")
    report = json.loads(run(offline.settings, "replay", "--json").stdout)
    assert (report["ok"], [m["key"] for m in report["mismatches"]]) == (False, ["k2"])
    assert run(offline.settings, "replay", "--automation", "nobody").exit_code == 1


def _start(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "garrison.cli", *args], cwd=ROOT, env=child_env(settings),
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )


@pytest.mark.worker
def test_garrison_worker_and_beat_run_celery_and_the_relay_finds_events_whose_publish_was_lost(
    offline: Garrison, tmp_path: Path
) -> None:
    settings = offline.settings
    counter.send("add", "lost", {"n": 1}, client=offline)  # NullPublisher: no task was ever sent
    procs = [
        _start(settings, tmp_path / "worker.log", "worker", "-P", "solo", "-n", "cli@%h", "--without-mingle"),
        _start(settings, tmp_path / "beat.log", "beat"),
    ]
    try:
        wait_until(lambda: offline.state("counter", "lost"), timeout=60, what="the relay and the worker")
        assert offline.state("counter", "lost") == {"count": 1, "applied": [["", 1]]}
        assert "cli@" in (tmp_path / "worker.log").read_text()
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert [p.returncode for p in procs] == [0, 0], (tmp_path / "worker.log").read_text()
