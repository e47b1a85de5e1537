"""``garrison ingest``: store one event (NAME KEY JSON) or, with ``--file``, the events of a JSON-lines file
in batches, one transaction each, with a progress bar and a resumable refusal of a bad line."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from typing import Any, TextIO

import click

from garrison.automations.machine import Machine
from garrison.cli.commands import Context, fail, pass_context, reports_errors
from garrison.cli.progress import progress_bar
from garrison.client import Garrison
from garrison.errors import ValidationError


@click.command()
@click.argument("name", required=False)
@click.argument("key", required=False)
@click.argument("data", metavar="JSON", required=False)
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT); with --file, of the lines that name none.")
@click.option("--idempotency-key", help="The same key twice (per tenant) stores the event once.")
@click.option("--target", metavar="AUTOMATION", help="Deliver to this automation only (a machine's reducer name).")
# Bytes that are not UTF-8 become lone surrogates, which validation refuses naming the line and field.
@click.option("--file", "source", type=click.File("r", encoding="utf-8", errors="surrogateescape"), metavar="PATH",
              help="Store the events of a JSON-lines file (- for stdin) instead of NAME KEY JSON.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="With --file: events per transaction.")
@click.option("--from-line", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --file: skip the lines before this one (to resume after a refused batch).")
@click.option("--progress/--no-progress", default=None,
              help="With --file: a progress bar on stderr (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored event (with --file: the counts) as JSON.")
@pass_context
@reports_errors
def ingest(
    obj: Context, name: str | None, key: str | None, data: str | None, tenant: str | None,
    idempotency_key: str | None, target: str | None, source: TextIO | None, batch_size: int, from_line: int,
    progress: bool | None, as_json: bool,
) -> None:
    """Store an event and wake its automations.

    Stores event NAME for KEY with JSON data (`-` reads it from stdin).

    \b
    garrison ingest initialInquiry ryan '{"name": "Ryan", "when": 1700000000}' --target support

    With --file, stores one event per line: {"name": ..., "key": ..., "data": {...}}, and optionally
    "tenant", "target", "idempotency_key", "system". Each batch of lines is one transaction. A bad line
    stops the run (exit 2) naming the line and the field: nothing of its batch is stored, the batches
    before it are, and --from-line resumes from its batch. With idempotency keys in the lines, running
    the whole file again is safe too.

    \b
    garrison ingest --file events.jsonl
    """
    if source is not None:
        if name is not None or idempotency_key or target:
            fail("with --file the events come from the file: put name, key, data, target and "
                 "idempotency_key in its lines", 2)
        _ingest_file(obj, source, tenant, batch_size, from_line, progress, as_json)
        return
    if name is None or key is None:
        fail("give NAME and KEY (or --file PATH)", 2)
    text = sys.stdin.read() if data == "-" else data or "{}"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"data is not valid JSON: {exc}", field="data") from exc
    except RecursionError as exc:
        raise ValidationError("data is nested too deep to read", field="data") from exc
    client = obj.client
    if target is not None and client.settings.automations:
        _check_target(client, target, name)
    event = client.ingest(name, key, payload, tenant=tenant, idempotency_key=idempotency_key, target=target)
    if as_json:
        click.echo(json.dumps({**_event_fields(event), "created_at": event.created_at.isoformat()}, sort_keys=True))
        return
    what = "already stored (idempotency key seen before)" if event.duplicate else "stored"
    click.echo(
        f"event {event.id} {what}: {event.name} for key {event.key!r} (tenant {event.tenant!r}, seq {event.seq})"
        + (f", target {event.target}" if event.target else "")
    )
    click.echo(f"data {json.dumps(event.data, sort_keys=True)}")


def _ingest_file(
    obj: Context, source: TextIO, tenant: str | None, batch_size: int, from_line: int, progress: bool | None,
    as_json: bool,
) -> None:
    """``ingest --file``: JSON lines in batches, each one ``ingest_many`` (one transaction)."""

    client = obj.client
    name = getattr(source, "name", "-")  # a wrapped stdin may have none
    label = "stdin" if name in ("-", "<stdin>") or not isinstance(name, str) else name
    size = _file_size(source)
    batch: list[tuple[int, dict[str, Any]]] = []
    counts = {"events": 0, "stored": 0, "duplicates": 0, "batches": 0}
    targets: set[tuple[str, str]] = set()

    def flush(bar: Any) -> None:
        try:
            written = client.ingest_many([item for _, item in batch])
        except ValidationError as exc:
            match = re.match(r"events\[(\d+)\]\.?", exc.field)
            number = batch[int(match.group(1))][0] if match else batch[0][0]
            message = re.sub(r"^events\[\d+\]\.?\s*", "", exc.message)
            field_name = exc.field[match.end():] if match else exc.field
            raise _BadLine(number, f"{message} (field: {field_name})", batch[0][0]) from exc
        counts["batches"] += 1
        counts["events"] += len(written)
        counts["duplicates"] += sum(e.duplicate for e in written)
        counts["stored"] = counts["events"] - counts["duplicates"]
        batch.clear()
        bar.label = f"ingest {label}: {counts['events']:,} events"
        bar.render_progress()

    try:
        with progress_bar(f"ingest {label}", size, show=progress) as bar:
            for number, line in enumerate(source, 1):
                bar.update(len(line.encode("utf-8", "surrogateescape")) if size is not None else 1)
                if number < from_line or not line.strip():
                    continue
                item = _parse_line(number, line, batch[0][0] if batch else number)
                if tenant is not None:
                    item.setdefault("tenant", tenant)
                if isinstance(item.get("target"), str) and client.settings.automations:
                    pair = (item["target"], str(item.get("name")))
                    if pair not in targets:
                        try:
                            _check_target(client, *pair)
                        except ValidationError as exc:
                            raise _BadLine(number, f"{exc.message} (field: {exc.field})",
                                           batch[0][0] if batch else number) from exc
                        targets.add(pair)
                batch.append((number, item))
                if len(batch) >= batch_size:
                    flush(bar)
            if batch:
                flush(bar)
    except _BadLine as bad:
        batches = counts["batches"]
        done = f"; the lines before it were ({counts['events']:,} events in {batches} " + (
            "batch)" if batches == 1 else "batches)") if batches else ""
        fail(f"line {bad.line}: {bad.message}\nnothing from line {bad.resume} on was stored{done}\n"
             f"resume with: garrison ingest --file {label if label != 'stdin' else '-'} --from-line {bad.resume}", 2)
    if as_json:
        click.echo(json.dumps({"source": label, **counts}, sort_keys=True))
        return
    plural = "" if counts["batches"] == 1 else "es"
    click.echo(f"ingested {counts['events']:,} events from {label} in {counts['batches']} batch{plural}: "
               f"{counts['stored']:,} stored, {counts['duplicates']:,} duplicates (idempotency key seen before)")


class _BadLine(Exception):
    """A refused line of ``ingest --file``; ``resume`` is the first line of its batch."""

    def __init__(self, line: int, message: str, resume: int) -> None:
        super().__init__(message)
        self.line, self.message, self.resume = line, message, resume


def _parse_line(number: int, line: str, resume: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadLine(number, f"not valid JSON: {exc.msg} (column {exc.colno})", resume) from exc
    except RecursionError as exc:
        raise _BadLine(number, "nested too deep to read (field: data)", resume) from exc
    if not isinstance(item, dict):
        raise _BadLine(number, 'must be a JSON object: {"name": ..., "key": ..., "data": {...}}', resume)
    return item


def _file_size(source: TextIO) -> int | None:
    """Bytes in a regular file (the progress bar's length); None for a pipe or a terminal."""
    try:
        info = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _check_target(client: Garrison, target: str, name: str) -> None:
    if target not in client.registry:
        raise ValidationError(
            f"no automation named {target!r} is registered (known: {sorted(a.name for a in client.registry)})",
            field="target",
        )
    automation = client.registry.get(target)
    if isinstance(automation, Machine):
        automation.check_reducer(name)


def _event_fields(event: Any) -> dict[str, Any]:
    return {
        k: getattr(event, k)
        for k in ("id", "tenant", "key", "seq", "name", "data", "target", "idempotency_key", "duplicate")
    }
