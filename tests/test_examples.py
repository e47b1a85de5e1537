"""The examples are runnable and do what they say: run offline here, and as a user runs them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from tests.harness import ROOT

EXAMPLES = ROOT / "examples"
START = 1_700_000_000.0


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_support_inquiry_example_times_out_the_silent_person_and_emails_support_once(offline: Garrison) -> None:
    example = load("support_inquiry")
    result = example.main(offline, start=START)
    assert result["states"] == {
        "12344": {"status": "timeout", "name": "ryan", "when": START},
        "12345": {"status": "responded", "name": "ana", "when": START},
    }
    assert result["emails"] == [("bob@help.com", "The person ryan has not responded")]
    assert offline.replay("inquiry").ok


def test_the_support_inquiry_example_runs_as_a_script_with_nothing_else_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["GARRISON_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "support_inquiry.py")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("email to bob@help.com: The person ryan has not responded") == 1
    assert "12345: {'status': 'responded'" in done.stdout


def test_the_cart_loop_example_prices_known_items_through_its_command(offline: Garrison) -> None:
    example = load("cart_loop")
    assert example.main(offline) == "4 items, total 16"
    assert offline.state("cart", "user-1") == {"items": ["apple", "kiwi", "durian", "melon"], "total": 16}
    assert offline.replay("cart").ok


def test_the_start_loop_example_reads_every_page_from_a_start_alone(offline: Garrison) -> None:
    example = load("start_loop")
    assert example.main(offline) == "4 items from 3 pages (done)"
    assert offline.state("reader", "news")["items"] == ["garrison 0.1", "pulses", "journeys", "time travel"]
    assert offline.state("reader", "news", version=1) == {"items": [], "pages": 0, "done": False}
    assert offline.replay("reader").ok


def test_the_start_loop_example_runs_as_a_script_with_nothing_else_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["GARRISON_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, str(EXAMPLES / "start_loop.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4 items from 3 pages (done)"


def test_the_follow_changes_example_resumes_after_its_cursor_without_repeating_a_change(
    offline: Garrison, tmp_path: Path
) -> None:
    example = load("follow_changes")
    result = example.main(offline, tmp_path / "tickets.cursor")
    assert result == {"open": {"T-2": "no coffee", "T-3": "wifi down"}, "handled": 4}
    assert list(offline.follow("tickets", since=(tmp_path / "tickets.cursor").read_text(), wait=False)) == []


def test_the_follow_changes_example_runs_as_a_script_with_nothing_else_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["GARRISON_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, str(EXAMPLES / "follow_changes.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "T-1 v1 opened: - -> open", "T-2 v1 opened: - -> open", "T-1 v2 closed: open -> closed",
        "T-3 v1 opened: - -> open", "open: ['T-2', 'T-3']",
    ]


def test_the_xstate_machine_example_pays_one_checkout_and_expires_the_other_on_its_timer(settings: Settings) -> None:
    client = Garrison(settings, publisher=NullPublisher(), clock=FrozenClock())
    try:
        result = load("xstate_machine").main(client)
        assert result == {
            "alice": ("paid", "done", {"items": ["kiwi"], "total": 4, "short": 1}),
            "bob": ("expired", "done", {"items": ["kiwi"], "total": 4}),
        }
        assert client.replay("checkout").ok
    finally:
        client.db.dispose()


def test_the_xstate_machine_example_runs_as_a_script_with_nothing_else_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["GARRISON_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run([sys.executable, str(EXAMPLES / "xstate_machine.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "alice: paid {'items': ['kiwi'], 'total': 4, 'short': 1}",
        "bob: expired {'items': ['kiwi'], 'total': 4}",
    ]
