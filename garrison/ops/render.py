"""Plain-text tables for the CLI: fixed columns, long cells cut with an ellipsis, ``-`` for nothing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from garrison.core.runs import RunInfo
from garrison.durations import format_duration
from garrison.ops.inspect import KeyReport, PastState
from garrison.ops.stats import Stats

INDENT = "  "
CELL_WIDTH = 60


def cell(value: Any, width: int | None = CELL_WIDTH) -> str:
    """One value as table text: JSON for data, seconds precision for times."""
    if value is None:
        text = "-"
    elif isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = " ".join(str(value).split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, width: int | None = CELL_WIDTH, indent: str = INDENT
) -> str:
    """Rows under headers, each column as wide as its widest cell; the last column is not padded."""
    texts = [[cell(v, width) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [list(headers), *texts]:
        padded = [text.ljust(widths[i]) for i, text in enumerate(row[:-1])] + [row[-1]]
        lines.append(indent + "  ".join(padded).rstrip())
    return "\n".join(lines)


def section(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None) -> str:
    if not rows:
        return f"{title}: none"
    return f"{title}\n{table(headers, rows, width=width)}"


def past_report(key: str, states: Sequence[PastState], *, full: bool = False) -> str:
    """``garrison inspect KEY --version N``: each automation's state at that point, with what made it."""
    width = None if full else CELL_WIDTH
    rows = [
        (p.automation, p.version or "-", p.message or "(no state yet)", p.seq, p.created_at, p.state)
        for p in states
    ]
    return f"key {key!r}\n" + table(("AUTOMATION", "VERSION", "MESSAGE", "SEQ", "AT", "STATE"), rows, width=width)


def key_report(report: KeyReport, *, full: bool = False, tracebacks: bool = False) -> str:
    """The ``garrison inspect`` page for one key."""
    width = None if full else CELL_WIDTH
    if not report.found:
        return f"nothing stored for key {report.key!r} in tenant {report.tenant!r}"
    parts = [
        f"key {report.key!r}  tenant {report.tenant!r}\n"
        f"{report.last_seq} messages ingested, applied up to seq {report.processed_seq}, "
        f"{report.pending_count} pending" + (f"\nwarning: {report.warning}" if report.warning else ""),
        section(
            "State",
            ("AUTOMATION", "VERSION", "CURSOR", "STATUS", "UPDATED", "STATE"),
            [(e.automation, e.version, e.cursor, _status(e.status, e.cursor), e.updated_at, e.state)
             for e in report.entities],
            width=width,
        ),
        section(
            f"History (last {len(report.versions)} of {report.versions_total} versions)",
            ("AUTOMATION", "VERSION", "SEQ", "EVENT", "MESSAGE", "AT", "DATA", "STATE"),
            [
                (v.automation, v.version, v.seq, v.event_id, v.message, v.created_at, v.data, v.state)
                for v in report.versions
            ],
            width=width,
        ),
        section(
            f"Pending ({report.pending_count} not applied yet)" if report.pending else "Pending",
            ("SEQ", "EVENT", "NAME", "TARGET", "INGESTED", "DATA"),
            [(p.seq, p.id, p.name, p.target, p.created_at, p.data) for p in report.pending],
            width=width,
        ),
        section(
            "Failures",
            ("ID", "AUTOMATION", "SEQ", "EVENT", "MESSAGE", "STATUS", "AT", "ERROR"),
            [
                (f.id, f.automation, f.seq, f.event_id, f.message,
                 f.status if f.retry_event_id is None else f"{f.status} as event {f.retry_event_id}",
                 f.created_at, f"{f.error_type}: {f.error}")
                for f in report.failures
            ],
            width=width,
        ),
        section(
            "Effects",
            ("ID", "AUTOMATION", "KIND", "NAME", "VERSION", "STATUS", "ATTEMPTS", "ERROR"),
            [(e.id, e.automation, e.kind, e.name, e.version, e.status, e.attempts, e.error) for e in report.effects],
            width=width,
        ),
    ]
    if tracebacks:
        parts += [
            f"Traceback of failure {f.id}\n{_block(f.traceback, INDENT)}" for f in report.failures if f.traceback
        ]
    parts.append(runs_section(report.runs, width=width, tracebacks=tracebacks))
    hints = []
    failed = [f.id for f in report.failures if f.status == "failed"]
    if failed:
        hints.append(f"retry a failure with: garrison retry {failed[0]}")
    hints += _run_hints(report.runs, tracebacks=tracebacks)
    if hints:
        parts.append("\n".join(hints))
    return "\n\n".join(parts)


# -- journey runs -------------------------------------------------------------------------------------

RUN_INDENT = INDENT * 2
LABEL_WIDTH = 8


def runs_section(runs: Sequence[RunInfo], *, width: int | None = CELL_WIDTH, tracebacks: bool = False) -> str:
    """The journey runs of a key, one block each: header, trigger, open wait or sleep, history, timers, log,
    result or error."""
    if not runs:
        return "Journey runs: none"
    widths = [max(len(r.label) for r in runs), max(len(r.automation) for r in runs),
              max(len(r.status) for r in runs)]
    blocks = [run_block(r, width=width, tracebacks=tracebacks, widths=widths) for r in runs]
    return "Journey runs\n" + "\n".join(blocks)


def run_block(
    run: RunInfo, *, width: int | None = CELL_WIDTH, tracebacks: bool = False, widths: Sequence[int] = (0, 0, 0)
) -> str:
    """One run as an operator reads it."""
    head = "  ".join(text.ljust(w) for text, w in zip((run.label, run.automation, run.status), widths, strict=True))
    times = f"started {cell(run.started_at)}  updated {cell(run.updated_at)}"
    if run.ended_at is not None:
        times += f"  ended {cell(run.ended_at)}"
    lines = [f"{INDENT}{head}  {times}"]

    def field_line(label: str, text: str) -> None:
        lines.append(f"{RUN_INDENT}{label.ljust(LABEL_WIDTH)} {text}".rstrip())

    field_line("trigger", trigger_text(run.trigger, width))
    if run.waiting:
        field_line(run.status, waiting_text(run.waiting, width))
    if run.history:
        field_line("history", f"{len(run.history)} {'call' if len(run.history) == 1 else 'calls'}")
        lines.append(table(
            ("#", "CALL", "NAME", "RESULT"),
            [(i, op.get("kind"), call_name(op), call_result(op, width)) for i, op in enumerate(run.history, 1)],
            width=width, indent=RUN_INDENT * 2,
        ))
    else:
        field_line("history", "none")
    if run.timers:
        field_line("timers", "")
        lines.append(table(
            ("NAME", "DUE", "STATUS", "FIRED"), [(t.name, t.due_at, t.status, t.fired_at) for t in run.timers],
            width=width, indent=RUN_INDENT * 2,
        ))
    if run.log:
        field_line("log", "")
        lines.append(table(
            ("AT", "TEXT"), [(_time(line.get("at")), line.get("text")) for line in run.log],
            width=width, indent=RUN_INDENT * 2,
        ))
    if run.status == "completed":
        field_line("result", cell(run.result, width))
    if run.error:
        field_line("error", error_text(run.error, width))
        if tracebacks and run.error.get("traceback"):
            lines.append(_block(str(run.error["traceback"]), RUN_INDENT * 2))
    return "\n".join(lines)


def runs_table(runs: Sequence[RunInfo], *, width: int | None = CELL_WIDTH) -> str:
    """``garrison runs``: one line per run, newest first."""
    rows = [
        [*(cell(v, width) for v in (r.label, r.automation, r.key, r.status, r.started_at, r.updated_at)),
         run_summary(r, width)]
        for r in runs
    ]
    return table(("ID", "JOURNEY", "KEY", "STATUS", "STARTED", "UPDATED", "DETAIL"), rows, width=None)


def run_summary(run: RunInfo, width: int | None = CELL_WIDTH) -> str:
    """What a run waits for, its result or its error, in one cell."""
    if run.waiting:
        return waiting_text(run.waiting, width)
    if run.status == "completed":
        return f"result {cell(run.result, width)}"
    if run.error:
        return error_text(run.error, width)
    return "-"


def trigger_text(trigger: dict[str, Any], width: int | None = CELL_WIDTH) -> str:
    if not trigger:
        return "-"
    where = ", ".join(
        f"{label} {trigger[k]}" for k, label in (("id", "event"), ("seq", "seq")) if trigger.get(k) is not None
    )
    text = str(trigger.get("name", "?")) + (f" ({where})" if where else "")
    return f"{text} {cell(trigger.get('data'), width)}" if trigger.get("data") else text


def waiting_text(waiting: dict[str, Any], width: int | None = CELL_WIDTH) -> str:
    """The open call of a suspended run: the wait (event, match, timeout and when it is due), the sleep
    (until when) or the step."""
    kind = waiting.get("kind")
    if kind == "wait":
        text = f"wait_for {waiting.get('name')}"
        if waiting.get("match"):
            text += f" match {cell(waiting['match'], width)}"
        if not waiting.get("timeout"):
            return f"{text}, no timeout"
        due = f" (due {cell(_time(waiting['due_at']))})" if waiting.get("due_at") else ""
        return f"{text}, timeout {waiting['timeout']}{due}"
    if kind == "sleep":
        return f"sleep until {cell(_time(waiting.get('until')))}"
    if kind == "step":
        return f"step {waiting.get('name')!r} (call {int(waiting.get('op', 0)) + 1}) in a worker"
    return cell(waiting, width)


def call_name(op: dict[str, Any]) -> str:
    """The name column of a history line: the event or step name, a wait's match after it."""
    name = str(op.get("name") or "")
    if op.get("kind") == "wait" and op.get("match"):
        name += f" {cell(op['match'])}"
    if op.get("kind") == "emit" and op.get("key") is not None:
        name += f" for {op['key']!r}"
    return name or "-"


def call_result(op: dict[str, Any], width: int | None = CELL_WIDTH) -> str:
    """What a memoized call returned, short."""
    kind = op.get("kind")
    result = op.get("result")
    if kind == "wait":
        if result is None:
            return "timed out"
        data = [e.get("data") for e in result] if isinstance(result, list) else result
        count = len(data) if isinstance(data, list) else 0
        shown = data[0] if isinstance(data, list) and count == 1 else data
        return f"{count} {'event' if count == 1 else 'events'}: {cell(shown, width)}"
    if kind == "sleep":
        return f"until {cell(_time(op.get('until')))}"
    if kind == "now":
        return cell(_time(result))
    if kind == "emit":
        return f"ingested {cell(op.get('data'), width)}"
    if kind == "events":
        count = len(result) if isinstance(result, list) else 0
        return f"{count} {'event' if count == 1 else 'events'}"
    return cell(result, width)


def error_text(error: dict[str, Any], width: int | None = CELL_WIDTH) -> str:
    message = cell(error.get("message"), None if width is None else width * 2)
    return f"{error.get('type', 'Error')}: {message}"


def _run_hints(runs: Sequence[RunInfo], *, tracebacks: bool) -> list[str]:
    hints = []
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        hints.append(f"retry a failed run with: garrison retry {failed[0].label}")
        if not tracebacks and any((r.error or {}).get("traceback") for r in failed):
            hints.append("show tracebacks with: --traceback")
    active = [r for r in runs if r.status in ("running", "waiting", "sleeping", "stepping")]
    if active:
        hints.append(f"cancel a run with: garrison cancel {active[0].label} --reason TEXT")
    return hints


def _time(value: Any) -> Any:
    """An ISO 8601 text as a datetime (so it prints like every other time), else the value itself."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _block(text: str, indent: str) -> str:
    """Multi-line text (a traceback) as it is, indented."""
    return "\n".join(indent + line for line in text.rstrip().splitlines())


# -- garrison stats -------------------------------------------------------------------------------------


def _status(status: str, cursor: int) -> str:
    if status == "halted":
        return f"halted at seq {cursor + 1} (garrison retry / skip)"
    if status == "behind":
        return f"behind after seq {cursor}"
    return status


def stats_report(stats: Stats) -> str:
    """``garrison stats``: the tenant's figures, then one line per automation and per running pulse."""
    span = format_duration(timedelta(seconds=stats.window))
    age = stats.oldest_pending_age
    lines = [
        f"tenant {stats.tenant!r} at {cell(stats.at)} UTC, over the last {span}",
        f"events    {stats.events:,} ingested ({stats.events_per_second:,.2f}/s)",
        f"pending   {stats.pending_messages:,} messages on {stats.pending_keys:,} keys"
        + (f", the oldest waiting {age:,.1f}s" if age is not None else ""),
        f"timers    {stats.timers_pending:,} pending: {stats.timers_overdue:,} overdue, "
        f"{stats.timers_due_soon:,} due in the next {span}",
        f"effects   {stats.effects_pending:,} pending, {stats.effects_dispatched:,} dispatched, "
        f"{stats.effects_failed:,} failed",
        f"failures  {stats.failures:,} waiting for a retry" + (" (garrison retry --all)" if stats.failures else ""),
        f"pulses    {len(stats.pulses):,} running",
    ]
    if stats.stalled:
        lines.append(f"warning   {stats.stalled}")
    parts = ["\n".join(lines)]
    parts.append(section(
        "Automations",
        ("AUTOMATION", "ENTITIES", f"CHANGES/{span}", "FAILURES", "HALTED", "BEHIND", "EFFECTS PENDING",
         "DISPATCHED", "FAILED", "TIMERS"),
        [(a.automation, f"{a.entities:,}", f"{a.changes:,}", f"{a.failures:,}", f"{a.halted:,}", f"{a.behind:,}",
          f"{a.effects_pending:,}", f"{a.effects_dispatched:,}", f"{a.effects_failed:,}", f"{a.timers_pending:,}")
         for a in stats.automations],
        width=None,
    ))
    if stats.tables:
        parts.append(section(
            "Storage (rows and size: every tenant's; oldest: this tenant's row under the table's retention rule)",
            ("TABLE", "ROWS", "SIZE", "RETENTION", "OLDEST KEPT"),
            [(t.table, "-" if t.rows is None else f"{t.rows:,}", _size(t.bytes),
              "-" if t.window_days is None else ("forever" if not t.window_days else f"{t.window_days:g} days"),
              t.oldest) for t in stats.tables],
            width=None,
        ))
    if stats.pulses:
        parts.append(section(
            "Pulses running",
            ("SLOT ID", "PULSE", "SLOT", "SENT", "STARTED", "UPDATED"),
            [(p.id, p.schedule, p.slot, f"{p.done:,}/{'?' if p.total is None else f'{p.total:,}'}", p.started_at,
              p.updated_at) for p in stats.pulses],
            width=None,
        ))
    return "\n\n".join(parts)


def _size(value: int | None) -> str:
    """Bytes as ``812 B``, ``4.0 KB``, ``1.2 MB``..."""
    if value is None:
        return "-"
    amount, unit = float(value), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            break
        amount /= 1024
    return f"{amount:,.0f} B" if unit == "B" else f"{amount:,.1f} {unit}"
