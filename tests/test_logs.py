"""Structured logs: a line logged while garrison works on a key says which tenant, automation, key and
event (or effect) it is about, whoever logs it (garrison, Celery or the automation's own code), as text
or as JSON lines (GARRISON_LOG_FORMAT); in process, in a real worker, and on the CLI's stderr."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from garrison.automations.machine import Machine, Transition
from garrison.cli import cli
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from garrison.errors import ConfigurationError
from garrison.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    current_context,
    install,
    log_context,
)
from tests.harness import WorkerProcess, wait_until

# Run by the worker too (GARRISON_AUTOMATIONS=tests.test_logs): logs from its reducer and its listener.
chatty = Machine("chatty")
app_log = logging.getLogger("tests.chatty")


@chatty.reducer
def say(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if data.get("boom"):
        raise ValueError("chatty refused it")
    app_log.info("reducer applied %s", data.get("n"))
    return {"n": data.get("n")}


@chatty.listener
def heard(t: Transition) -> None:
    app_log.info("listener saw version %s", t.version)


@pytest.fixture
def captured() -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """JSON lines of everything logged under ``tests`` and ``garrison`` while the test runs."""
    stream = io.StringIO()
    handler = install(logging.StreamHandler(stream), "json")
    loggers = [logging.getLogger("tests"), logging.getLogger("garrison")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)

    def lines(message_start: str) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [p for p in parsed if p["message"].startswith(message_start)]

    yield lines
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def _record(
    logger: logging.Logger, formatter: logging.Formatter, *args: Any, exc_info: bool = False, **extra: Any
) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(*args, exc_info=exc_info, extra=extra or None)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().rstrip("\n")


def test_context_fields_nest_and_come_back_and_a_record_keeps_the_fields_it_names_itself() -> None:
    logger = logging.getLogger("tests.logs.unit")
    with log_context(tenant="acme", key="k1"):
        with log_context(automation="orders", event_id=42, key=None):
            assert current_context() == {"tenant": "acme", "key": "k1", "automation": "orders", "event_id": 42}
            line = json.loads(_record(logger, JsonFormatter(), "applied %s", "x", key="own", effect_id=7))
        assert current_context() == {"tenant": "acme", "key": "k1"}
        text = _record(logger, TextFormatter("%(levelname)s %(message)s"), "boom")
    assert current_context() == {}
    assert line["message"] == "applied x" and line["level"] == "WARNING" and line["logger"] == "tests.logs.unit"
    assert (line["tenant"], line["automation"], line["key"], line["event_id"], line["effect_id"]) == (
        "acme", "orders", "own", 42, 7,
    )
    assert text == "WARNING boom [tenant=acme key=k1]"
    assert _record(logger, TextFormatter("%(message)s"), "outside") == "outside"


def test_a_traceback_goes_in_the_json_line_and_after_the_fields_in_text() -> None:
    logger = logging.getLogger("tests.logs.exc")
    try:
        raise RuntimeError("provider down")
    except RuntimeError:
        with log_context(tenant="acme"):
            line = json.loads(_record(logger, JsonFormatter(), "failed", exc_info=True))
            text = _record(logger, TextFormatter("%(message)s"), "failed", exc_info=True)
    assert "RuntimeError: provider down" in line["exc_info"] and line["tenant"] == "acme"
    assert text.startswith("failed [tenant=acme]\nTraceback") and text.endswith("RuntimeError: provider down")


def test_configure_logging_gives_a_web_process_the_same_lines_and_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("text", "INFO", stream=first)
        configure_logging("json", "WARNING", stream=second)
        assert len(root.handlers) == len(before) + 1 and root.level == logging.WARNING
        with log_context(tenant="acme", key="order-1"):
            logging.getLogger("myapp.views").warning("order refused")
            logging.getLogger("myapp.views").info("not shown at WARNING")
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert first.getvalue() == ""
    [line] = [json.loads(text) for text in second.getvalue().splitlines()]
    assert (line["message"], line["logger"], line["tenant"], line["key"]) == (
        "order refused", "myapp.views", "acme", "order-1",
    )


def test_the_log_format_setting_is_text_or_json_and_anything_else_is_refused_naming_it() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"GARRISON_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"GARRISON_LOG_FORMAT": "yaml"})
    assert info.value.context["field"] == "log_format"


def test_runner_lines_carry_the_tenant_key_and_for_effects_the_automation_and_effect(
    settings: Settings, captured: Callable[[str], list[dict[str, Any]]]
) -> None:
    client = Garrison(settings, publisher=NullPublisher(), automations=[chatty])
    try:
        chatty.send("say", "k-1", {"n": 1}, tenant="acme", client=client)
        bad = chatty.send("say", "k-2", {"boom": True}, tenant="acme", client=client)
        runner = Runner(client)
        [effect_id] = runner.run_keys("acme", ["k-1"])[0].effect_ids
        runner.run_keys("acme", ["k-2"])
        runner.perform_effect("acme", effect_id)
    finally:
        client.db.dispose()

    [applied] = captured("reducer applied 1")
    assert (applied["tenant"], applied["key"]) == ("acme", "k-1")
    [failed] = captured("handler failed")
    assert (failed["tenant"], failed["automation"], failed["key"]) == ("acme", "chatty", "k-2")
    assert failed["event_id"] == bad.id and "chatty refused it" in failed["error"]
    [heard_line] = captured("listener saw version 1")
    assert (heard_line["tenant"], heard_line["automation"], heard_line["key"], heard_line["effect_id"]) == (
        "acme", "chatty", "k-1", effect_id,
    )


def _worker_lines(settings: Settings, worker: Callable[..., WorkerProcess]) -> list[str]:
    """Start a worker, have it log from a reducer, a listener and a failing handler; its output lines."""
    proc = worker(settings)
    client = Garrison(settings)
    try:
        chatty.send("say", "w-1", {"n": 5}, tenant="acme", client=client)
        chatty.send("say", "w-2", {"boom": True}, tenant="acme", client=client)
        wait_until(lambda: "listener saw version 1" in proc.output and "handler failed" in proc.output,
                   what="the worker to log the listener and the failure")
    finally:
        client.db.dispose()
    return proc.output.splitlines()


def test_a_real_worker_writes_json_lines_naming_the_task_tenant_automation_key_and_event(
    backend: str, settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess]
) -> None:
    lines = _worker_lines(settings_for(backend, automations=("tests.test_logs",), log_format="json"), worker)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r["message"].endswith(" ready.") for r in records)
    [applied] = [r for r in records if r["message"] == "reducer applied 5"]
    assert (applied["tenant"], applied["key"], applied["task"]) == ("acme", "w-1", "garrison.process")
    [heard_line] = [r for r in records if r["message"] == "listener saw version 1"]
    assert (heard_line["tenant"], heard_line["automation"], heard_line["key"], heard_line["task"]) == (
        "acme", "chatty", "w-1", "garrison.effect",
    )
    assert heard_line["effect_id"] == 1 and heard_line["task_id"]
    [failed] = [r for r in records if r["message"] == "handler failed"]
    assert (failed["tenant"], failed["automation"], failed["key"], failed["event_id"]) == ("acme", "chatty", "w-2", 2)


def test_cli_warnings_name_the_tenant_in_text_and_are_json_lines_under_json(settings: Settings) -> None:
    down = settings.with_overrides(broker_url="redis://127.0.0.1:9/0", automations=("tests.test_logs",))
    args = ["ingest", "say", "k1", '{"n": 1}', "--tenant", "acme", "--target", "chatty"]
    text = CliRunner(env=down.as_env()).invoke(cli, args, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    [warning] = [line for line in text.stderr.splitlines() if line.startswith("warning: ")]
    assert warning.startswith("warning: publish failed; the relay will pick these keys up")
    assert warning.endswith("[tenant=acme]")
    as_json = CliRunner(env={**down.as_env(), "GARRISON_LOG_FORMAT": "json"}).invoke(cli, args, catch_exceptions=False)
    [line] = [json.loads(line) for line in as_json.stderr.splitlines() if line.startswith("{")]
    assert (line["level"], line["tenant"], line["keys"]) == ("WARNING", "acme", 1)
    assert line["message"].startswith("publish failed") and "exc_info" in line


def test_a_real_worker_in_text_format_puts_the_fields_after_each_message(
    settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess]
) -> None:
    lines = _worker_lines(settings_for("postgres", automations=("tests.test_logs",)), worker)
    [heard_line] = [line for line in lines if "listener saw version 1" in line]
    assert heard_line.endswith("listener saw version 1 [tenant=acme automation=chatty key=w-1 effect_id=1]")
    assert heard_line.startswith("[")  # Celery's own layout before it: [time: LEVEL/process]
    [failed] = [line for line in lines if "handler failed" in line]
    # The line of a failed handler names its exception.
    assert failed.endswith("handler failed [tenant=acme automation=chatty key=w-2 event_id=2 "
                           "error=ValueError('chatty refused it')]")
