"""``garrison demo`` runs casern's support inquiry end to end with a real worker and no server: the person who
never responds times out and support gets exactly one email about them, the one who responds gets none."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from garrison.automations.runner import Runner
from garrison.client import Garrison
from garrison.demo.support import read_mailbox, send_email, support
from tests.harness import ROOT

START = 1_700_000_000.0


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.worker
@pytest.mark.slow
def test_the_demo_emails_support_once_about_the_person_who_timed_out_and_never_about_the_other(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "demo"
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "garrison.cli", "demo", "--dir", str(directory)],
        cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=90,
    )
    took = time.monotonic() - began
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
    assert took < 40, f"the demo took {took:.1f}s"


def _mailbox(directory: Path) -> list[dict[str, str]]:
    import json

    return [json.loads(line) for line in (directory / "mailbox.jsonl").read_text().splitlines()]


def test_the_demo_refuses_to_empty_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-m", "garrison.cli", "demo", "--dir", str(tmp_path)],
        env=demo_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "was not made by `garrison demo`" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


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
