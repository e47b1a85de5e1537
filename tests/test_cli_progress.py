"""Long CLI work shows its progress on stderr while stdout keeps the result: bulk ingest from a JSON-lines
file (batched, each batch one transaction: a bad line names its line and field and stores nothing of its
batch), replay with a bar per automation, and ``pulses watch`` following a slot's fan-out to the end."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result

from garrison.cli import cli, operate
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.runner import Runner
from garrison.ops.inspect import inspect_key
from garrison.pulses.fanout import fan_out_chunk, open_slot, run_pulse, save_schedule, slot_progress
from garrison.pulses.schedules import PulseSchedule
from tests.apps.counter import counter


def run(settings: Settings, *args: str, input: str | None = None) -> Result:
    return CliRunner(env=settings.as_env()).invoke(cli, list(args), input=input, catch_exceptions=False)


def jsonl(events: Sequence[dict[str, Any] | str]) -> str:
    return "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events)


def add(key: str, n: int, **more: Any) -> dict[str, Any]:
    return {"name": "add", "key": key, "data": {"n": n}, "target": "counter", **more}


def applied(client: Garrison, key: str, tenant: str | None = None) -> list[int]:
    state = client.state("counter", key, tenant=tenant)
    return [n for _, n in state["applied"]] if state else []


# -- ingest --file ------------------------------------------------------------------------------------


def test_ingest_file_stores_every_line_in_batches_in_order_and_shows_progress_on_stderr(
    offline: Garrison, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    lines: list[dict[str, Any] | str] = [add(f"k{n % 3}", n) for n in range(9)]
    lines[4:4] = ["", "   "]  # blank lines are skipped
    lines.append(add("k0", 100, tenant="acme"))
    path.write_text(jsonl(lines))

    done = run(offline.settings, "ingest", "--file", str(path), "--batch-size", "4", "--progress",
               "--tenant", "other")
    assert done.exit_code == 0, done.output
    assert done.stdout == (f"ingested 10 events from {path} in 3 batches: 10 stored, "
                           "0 duplicates (idempotency key seen before)\n")
    # Not a terminal: click writes each new label as a line, one per batch.
    assert done.stderr.splitlines() == [f"ingest {path}", f"ingest {path}: 4 events", f"ingest {path}: 8 events",
                                        f"ingest {path}: 10 events"]
    Runner(offline).run_pending("other")
    Runner(offline).run_pending("acme")
    assert [applied(offline, f"k{i}", "other") for i in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert applied(offline, "k0", "acme") == [100]
    assert inspect_key(offline, "k0").last_seq == 0  # nothing went to the default tenant


def test_a_bad_line_names_its_line_and_field_and_stores_nothing_of_its_batch_then_resume_finishes_it(
    offline: Garrison, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    lines = [add("k1", n, idempotency_key=f"e{n}") for n in range(1, 7)]
    lines[4] = {**lines[4], "key": " "}
    path.write_text(jsonl(lines))

    refused = run(offline.settings, "ingest", "--file", str(path), "--batch-size", "3")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == (
        "error: line 5: key must not be empty (field: key)\n"
        "nothing from line 4 on was stored; the lines before it were (3 events in 1 batch)\n"
        f"resume with: garrison ingest --file {path} --from-line 4\n"
    )
    assert inspect_key(offline, "k1").last_seq == 3

    lines[4] = add("k1", 5, idempotency_key="e5")
    path.write_text(jsonl(lines))
    resumed = run(offline.settings, "ingest", "--file", str(path), "--batch-size", "3", "--from-line", "4")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.startswith("ingested 3 events from ") and " in 1 batch: 3 stored, 0 dup" in resumed.stdout
    again = run(offline.settings, "ingest", "--file", str(path), "--json")
    assert json.loads(again.stdout) == {"source": str(path), "events": 6, "stored": 0, "duplicates": 6, "batches": 1}
    Runner(offline).run_pending()
    assert applied(offline, "k1") == [1, 2, 3, 4, 5, 6]


BAD_LINES = [
    ("{not json", "line 2: not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ("[1, 2]", 'line 2: must be a JSON object: {"name": ..., "key": ..., "data": {...}}'),
    (json.dumps({**add("k", 1), "colour": "red"}), "line 2: has unknown fields ['colour'] (field: colour)"),
    (json.dumps({**add("k", 1), "data": 5}), "line 2: data must be a JSON object (a dict), not int (field: data)"),
    (json.dumps({**add("k", 1), "tenant": "x" * 65}), "line 2: tenant is longer than 64 characters (field: tenant)"),
    (json.dumps({**add("k", 1), "target": "nobody"}), "line 2: no automation named 'nobody' is registered"),
    (json.dumps({**add("k", 1), "name": "nope"}), "(field: reducer)"),
    # Hostile input (issue 11): NUL, nesting, numbers JSON peers cannot read, garrison's own namespace.
    (json.dumps({**add("k", 1), "key": "k\u0000"}), "line 2: key contains a NUL character (field: key)"),
    ('{"name": "add", "key": "k", "target": "counter", "data": {"x": ' + "[" * 5000 + "]" * 5000 + "}}",
     "line 2: nested too deep to read (field: data)"),
    ('{"name": "add", "key": "k", "target": "counter", "data": {"x": ' + "[" * 70 + "]" * 70 + "}}",
     "GARRISON_MAX_NESTING) (field: data)"),
    ('{"name": "add", "key": "k", "target": "counter", "data": {"x": NaN}}', "data.x is nan, which is not JSON"),
    (json.dumps({**add("k", 1), "data": {"x": 2**60}}), "data.x is an integer beyond"),
    (json.dumps({**add("k", 1), "idempotency_key": "garrison/timer:1"}), "that namespace is garrison's own"),
]


def test_ingest_file_refuses_each_kind_of_bad_line_naming_it_and_stores_nothing(
    offline: Garrison, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    for line, message in BAD_LINES:
        path.write_text(jsonl([add("k", 0), line, add("k", 2)]))
        refused = run(offline.settings, "ingest", "--file", str(path))
        assert refused.exit_code == 2, line
        first, second, _ = refused.stderr.splitlines()
        assert first.startswith("error: line 2: ") and message in first, (line, first)
        assert second == "nothing from line 1 on was stored"
    assert inspect_key(offline, "k").last_seq == 0


def test_ingest_file_refuses_bytes_that_are_not_utf8_naming_the_line_and_field(
    offline: Garrison, tmp_path: Path
) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(jsonl([add("k", 0)]).encode() + b'{"name": "add", "key": "caf\xe9", "target": "counter"}\n')
    refused = run(offline.settings, "ingest", "--file", str(path))
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert refused.stderr.startswith("error: line 2: key contains a lone surrogate"), refused.stderr
    assert inspect_key(offline, "k").last_seq == 0


def test_ingest_reads_json_lines_from_stdin_and_refuses_mixing_them_with_name_and_key(offline: Garrison) -> None:
    done = run(offline.settings, "ingest", "--file", "-", "--json", input=jsonl([add("s", 1), add("s", 2)]))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"source": "stdin", "events": 2, "stored": 2, "duplicates": 0, "batches": 1}
    assert inspect_key(offline, "s").last_seq == 2

    mixed = run(offline.settings, "ingest", "add", "s", "--file", "-", input="")
    assert mixed.exit_code == 2 and mixed.stderr.startswith("error: with --file the events come from the file")
    nothing = run(offline.settings, "ingest")
    assert nothing.exit_code == 2 and nothing.stderr == "error: give NAME and KEY (or --file PATH)\n"


# -- replay --progress --------------------------------------------------------------------------------


def test_replay_with_progress_checks_the_same_entities_and_still_finds_a_mismatch(offline: Garrison) -> None:
    for n in range(3):
        for key in ("k1", "k2", "k3"):
            counter.send("add", key, {"n": n}, client=offline)
    Runner(offline).run_pending()
    plain = run(offline.settings, "replay")
    shown = run(offline.settings, "replay", "--progress")
    assert shown.exit_code == plain.exit_code == 0
    assert shown.stdout == plain.stdout == "checked 3 entities, 9 events: every stored state reproduced\n"
    assert shown.stderr == "replay counter\n" and plain.stderr == ""

    from sqlalchemy import update

    from garrison.models import ENTITIES

    with offline.db.session() as s:
        s.execute(update(ENTITIES).where(ENTITIES.c.tenant == offline.settings.tenant, ENTITIES.c.key == "k2")
                  .values(state={"count": 99}))
    broken = run(offline.settings, "replay", "--progress", "--automation", "counter")
    assert broken.exit_code == 1
    assert broken.stdout.splitlines()[:2] == [
        "checked 3 entities, 9 events: 1 mismatched",
        """  mismatch counter 'k2': stored {"count":99}  replayed {"applied":[["",0],["",1],["",2]],"count":3}""",
    ]
    assert run(offline.settings, "replay", "--progress", "--automation", "nobody").exit_code == 1


# -- pulses watch -------------------------------------------------------------------------------------


def _running_slot(client: Garrison, keys: str) -> int:
    for key in keys:
        counter.send("add", key, {"n": 1}, client=client)
    Runner(client).run_pending()
    now = client.clock.now()
    schedule = save_schedule(client.db, "default", PulseSchedule("tick", "counter", "add", every="1m"), now)
    opened = open_slot(client.db, "default", schedule, now, now)
    assert opened is not None and opened.status == "running"
    return opened.id


def test_pulses_watch_follows_a_running_slot_until_every_entity_is_sent(
    offline: Garrison, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot_id = _running_slot(offline, "abcde")
    seen: list[tuple[int, int | None]] = []

    def between_polls(seconds: float) -> None:  # meanwhile, the fleet sends one page of two entities
        seen.append(slot_progress(offline.db, "default", slot_id))
        fan_out_chunk(offline.db, "default", slot_id, offline.clock.now(), 2)

    monkeypatch.setattr(operate, "time", SimpleNamespace(sleep=between_polls, monotonic=time.monotonic))
    watched = run(offline.settings, "pulses", "watch", "tick", "--progress", "--interval", "0.01")
    assert watched.exit_code == 0, watched.output
    assert watched.stdout.startswith("pulse 'tick' slot ") and watched.stdout.endswith(": done 5/5\n")
    assert watched.stderr.startswith("pulse tick @ ")
    assert seen[:3] == [(0, 5), (2, 5), (4, 5)] and seen == sorted(seen)
    assert [inspect_key(offline, k).last_seq for k in "abcde"] == [2] * 5  # its add, then the pulse
    assert slot_progress(offline.db, "default", slot_id) == (5, 5)


def test_pulses_watch_gives_up_after_its_timeout_and_says_when_nothing_runs(offline: Garrison) -> None:
    unknown = run(offline.settings, "pulses", "watch", "tick")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error: no pulse named 'tick'")
    slot_id = _running_slot(offline, "ab")
    stuck = run(offline.settings, "pulses", "watch", "tick", "--timeout", "0.2", "--interval", "0.05")
    assert stuck.exit_code == 1
    assert stuck.stdout.endswith(": running 0/2\n") and stuck.stderr == "error: slot still running after 0.2s\n"
    other = run(offline.settings, "pulses", "--tenant", "acme", "watch", "tick")
    assert other.exit_code == 1 and "tenant='acme'" in other.stderr  # the group's --tenant applies

    run_pulse(offline, "default", slot_id, chunk=10)
    idle = run(offline.settings, "pulses", "watch", "tick", "--wait", "0.1", "--interval", "0.05")
    assert idle.exit_code == 0
    assert idle.stdout.startswith("pulse 'tick': no slot running; last slot ") and idle.stdout.endswith("done 2/2\n")
