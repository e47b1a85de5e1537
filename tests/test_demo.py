"""``garrison demo`` runs the events seed's onboarding journey end to end with a real worker (with beat) and
no server: the user's events go in at the seed's times, the reminders come from durable timers, and the
printout is the seed's demo in the seed's order. ``garrison demo --name support`` runs casern's support
inquiry: the person who never responds times out and support gets exactly one email about them, the one
who responds gets none."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.core.runner import Runner
from garrison.demo.onboarding import onboarding
from garrison.demo.runner import Feed
from garrison.demo.support import read_mailbox, send_email, support
from tests.harness import ROOT
from tests.test_examples import load

START = 1_700_000_000.0
STAMP = re.compile(r"^\[([ \d]\d\.\d\d)s\] (.*)$")

# The seed's demo, line for line, plus the reminder/post.created events this journey ingests where the
# seed's only logs "send reminder to write post2".
SEED = [
    "creating event users[user1][app/email.submitted]",
    "    waited 1s for account.created for user user1",
    "        send reminder to create account",
    "creating event users[user1][reminder/account.created]",
    "    waited 2s for account.created for user user1",
    "        send reminder to create account",
    "creating event users[user1][reminder/account.created]",
    "    waited 4s for account.created for user user1",
    "        send reminder to create account",
    "creating event users[user1][reminder/account.created]",
    "creating event users[user1][app/account.created]",
    "    waited 6s for app/email.verified",
    "        no email verified, wait for it",
    "creating event users[user1][app/email.verified]",
    "creating event users[user1][app/login]",
    "creating event users[user1][app/post.created]",
    "    waited 2s for post2 created",
    "        send reminder to write post2",
    "creating event users[user1][reminder/post.created]",
    "    waited 2s for post2 created",
    "        send reminder to write post2",
    "creating event users[user1][reminder/post.created]",
    "creating event users[user1][app/post.created]",
    "    end of workflow",
]
RESULT = {
    "email": "user1@example.com",
    "posts": [{"id": "post1", "userId": "u1"}, {"id": "post2", "userId": "u1"}],
    "userId": "u1",
}


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_demo(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "garrison.cli", "demo", "--dir", str(tmp_path / "demo"), *args],
        cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=timeout,
    )
    return done, time.monotonic() - began


def timeline(lines: list[str]) -> list[tuple[float, str]]:
    """The demo's ``[ 1.02s] ...`` lines as (seconds, text)."""
    return [(float(m[1]), m[2]) for m in map(STAMP.match, lines) if m]


@pytest.mark.worker
@pytest.mark.slow
def test_the_demo_runs_the_seeds_onboarding_journey_on_a_worker_and_prints_the_seeds_sequence(
    tmp_path: Path,
) -> None:
    done, _ = run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    printed = timeline(lines)
    texts = [text for _, text in printed]
    stripped = [text.strip() for text in texts]
    assert stripped.count("send reminder to create account") == 3
    assert stripped.count("no email verified, wait for it") == 1
    assert stripped.count("send reminder to write post2") == 2
    assert stripped.count("end of workflow") == 1
    assert texts == SEED, "\n".join(lines)
    times = [at for at, _ in printed]
    assert times == sorted(times)
    [result] = [line for line in lines if line.startswith("result: ")]
    assert re.fullmatch(r"result: run/1 completed at \+\d+\.\d\ds, result (.*)", result), result
    assert json.loads(result.split(", result ", 1)[1]) == RESULT
    after = lines[lines.index(result):]
    assert "$ garrison inspect user1" in after and "key 'user1'  tenant 'default'" in after
    assert "--beat" in next(line for line in lines if line.startswith("$ celery"))
    assert lines[-1] == "worker stopped (exit code 0)"


def test_the_demo_feed_prints_the_seeds_sequence_from_what_is_stored(
    settings_for: Callable[..., Settings],
) -> None:
    """What the demo prints, from a run on a frozen clock: exact times, and an event before the lines the
    journey logged on waking up to it."""
    settings = settings_for("sqlite")
    client = Garrison(settings, automations=[onboarding], publisher=NullPublisher(), clock=FrozenClock())
    start = client.clock.now().timestamp()
    load("onboarding").simulate(client)
    printed: list[str] = []
    feed = Feed(client, "user1", start, printed.append)
    feed.poll(feed.runs())
    feed.flush()
    feed.poll(feed.runs())
    feed.flush()  # nothing twice
    assert [text for _, text in timeline(printed)] == SEED
    assert printed[:2] == [
        "[ 0.00s] creating event users[user1][app/email.submitted]",
        "[ 1.00s]     waited 1s for account.created for user user1",
    ]
    assert printed[-2:] == [
        "[20.50s] creating event users[user1][app/post.created]",
        "[20.50s]     end of workflow",
    ]
    client.db.dispose()


@pytest.mark.worker
@pytest.mark.slow
def test_the_support_demo_emails_support_once_about_the_person_who_timed_out_and_never_about_the_other(
    tmp_path: Path,
) -> None:
    done, _ = run_demo(tmp_path, "--name", "support", timeout=90)
    directory = tmp_path / "demo"
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    emails = [line for line in lines if "  email  " in line]
    assert len(emails) == 1
    assert emails[0].endswith("email  to bob@help.com: 'The person Ryan has not responded'")
    assert not any("Alice" in line for line in emails)
    assert any("ryan   v2  inquired -> timeout  (checkTimeout)" in line for line in lines)
    assert any("alice  v2  inquired -> responded  (respond)" in line for line in lines)
    assert not any(line.endswith("(checkTimeout)") and "alice" in line for line in lines)
    assert "$ garrison inspect ryan" in lines and "key 'ryan'  tenant 'default'" in lines
    assert "result: ryan timeout, alice responded; emails about Ryan: 1, about Alice: 0" in lines
    assert lines[-1] == "worker stopped (exit code 0)"
    assert [e["message"] for e in (_mailbox(directory))] == ["The person Ryan has not responded"]


def _mailbox(directory: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (directory / "mailbox.jsonl").read_text().splitlines()]


def test_the_demo_refuses_to_empty_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    for extra in ([], ["--name", "support"]):
        done = subprocess.run(
            [sys.executable, "-m", "garrison.cli", "demo", "--dir", str(tmp_path), *extra],
            env=demo_env(), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 1
        assert "was not made by `garrison demo`" in done.stderr
        assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_the_demo_names_the_demos_it_has(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "garrison.cli", "demo", "--dir", str(tmp_path / "demo"), "--name", "cart"],
        env=demo_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "'onboarding', 'support'" in done.stderr
    assert not (tmp_path / "demo").exists()


def test_check_timeout_compares_the_right_way_round_and_takes_the_time_from_its_data(offline: Garrison) -> None:
    offline.register(support)
    for key in ("early", "late", "answered"):
        support.send("initialInquiry", key, {"name": key.title(), "when": START}, client=offline)
    support.send("respond", "answered", {"when": START + 1}, client=offline)
    support.send("checkTimeout", "early", {"now": START + 2.5}, client=offline)  # not past timeoutAfter
    support.send("checkTimeout", "late", {}, client=offline)  # no time given: nothing happens
    for key in ("late", "answered"):
        support.send("checkTimeout", key, {"now": START + 2.6}, client=offline)
    support.send("checkTimeout", "late", {"now": START + 9}, client=offline)  # already timed out
    Runner(offline).run_pending()

    assert offline.state("support", "early")["status"] == "inquired"
    assert offline.state("support", "late") == {"status": "timeout", "name": "Late", "when": START}
    assert offline.state("support", "answered")["status"] == "responded"
    assert [e["message"] for e in read_mailbox(offline.settings)] == ["The person Late has not responded"]
    for key in ("early", "late", "answered"):
        assert offline.check("support", key) == []
    assert offline.replay("support").ok


def test_the_mail_service_sends_once_per_idempotency_key(offline: Garrison) -> None:
    assert send_email("bob@help.com", "hello", idempotency_key="k1")
    assert not send_email("bob@help.com", "hello again", idempotency_key="k1")
    assert send_email("bob@help.com", "other", idempotency_key="k2")
    assert [e["message"] for e in read_mailbox(offline.settings)] == ["hello", "other"]
