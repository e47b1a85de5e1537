"""Plain-text tables for the CLI: fixed columns, long cells cut with an ellipsis, ``-`` for nothing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from garrison.inspect import KeyReport

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


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, width: int | None = CELL_WIDTH) -> str:
    """Rows under headers, each column as wide as its widest cell; the last column is not padded."""
    texts = [[cell(v, width) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [list(headers), *texts]:
        padded = [text.ljust(widths[i]) for i, text in enumerate(row[:-1])] + [row[-1]]
        lines.append(INDENT + "  ".join(padded).rstrip())
    return "\n".join(lines)


def section(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None) -> str:
    if not rows:
        return f"{title}: none"
    return f"{title}\n{table(headers, rows, width=width)}"


def key_report(report: KeyReport, *, full: bool = False) -> str:
    """The ``garrison inspect`` page for one key."""
    width = None if full else CELL_WIDTH
    if not report.found:
        return f"nothing stored for key {report.key!r} in tenant {report.tenant!r}"
    parts = [
        f"key {report.key!r}  tenant {report.tenant!r}\n"
        f"{report.last_seq} messages ingested, applied up to seq {report.processed_seq}, "
        f"{report.pending_count} pending",
        section(
            "State",
            ("AUTOMATION", "VERSION", "CURSOR", "UPDATED", "STATE"),
            [(e.automation, e.version, e.cursor, e.updated_at, e.state) for e in report.entities],
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
    failed = [f.id for f in report.failures if f.status == "failed"]
    if failed:
        parts.append(f"retry a failure with: garrison retry {failed[0]}")
    return "\n\n".join(parts)
