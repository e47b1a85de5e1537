"""Commands that look at and repair what is stored: ``inspect``, ``replay``, ``retry``, ``runs``, ``cancel``,
``stats`` and ``pulses watch``; and ``demo``."""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click

from garrison.cli.commands import Context, fail, pass_context, reports_errors
from garrison.cli.progress import progress_bar
from garrison.cli.pulses import TENANT_KEY
from garrison.core.replay import Mismatch, ReplayReport
from garrison.core.runs import STATUSES
from garrison.durations import parse_duration
from garrison.ops import render
from garrison.ops.inspect import inspect_key, jsonable, past_states
from garrison.ops.stats import collect_stats, count_entities, entity_keys


@click.command("inspect")
@click.argument("key")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--automation", help="Only this automation's rows.")
@click.option("--history", default=20, show_default=True, help="How many recent state versions to show.")
@click.option(
    "--limit", default=50, show_default=True, help="At most this many pending messages, failures, effects, runs."
)
@click.option("--full", is_flag=True, help="Do not cut long states and data.")
@click.option("--traceback", "tracebacks", is_flag=True, help="Also print the tracebacks of failures and failed runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--version", "version", type=click.IntRange(min=0), metavar="N",
              help="Time travel: only the state each automation had at its version N.")
@click.option("--at", "at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
              metavar="TIME", help="Time travel: only the state each automation had at TIME (ISO 8601, UTC "
              "unless it has an offset).")
@pass_context
@reports_errors
def inspect_command(
    obj: Context, key: str, tenant: str | None, automation: str | None, history: int, limit: int, full: bool,
    tracebacks: bool, as_json: bool, version: int | None, at: datetime | None,
) -> None:
    """Show what is stored for a key.

    State per automation, version history, pending messages, failures, effects, and each journey run:
    its memoized calls, what it waits for, its timers, log, result or error.

    With --version N or --at TIME: the state each automation had then (time travel).

    Exits 1 when nothing at all is stored for the key in the tenant.
    """
    if version is not None or at is not None:
        states = past_states(obj.client, key, tenant=tenant, automation=automation, version=version, at=at)
        if as_json:
            click.echo(json.dumps([jsonable(asdict(p)) for p in states], indent=2, sort_keys=True))
        else:
            click.echo(render.past_report(key, states, full=full))
        return
    report = inspect_key(obj.client, key, tenant=tenant, automation=automation, history=history, limit=limit)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render.key_report(report, full=full, tracebacks=tracebacks))
    if not report.found:
        raise click.exceptions.Exit(1)


@click.command()
@click.option("--automation", help="Only this automation (default: every registered one).")
@click.option("--key", help="Only this key.")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option(
    "--versions", is_flag=True,
    help="With --key: also re-derive every stored version from the one before it (proves reducers pure).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar per automation on stderr (default: when stderr is a terminal).")
@pass_context
@reports_errors
def replay(
    obj: Context, automation: str | None, key: str | None, tenant: str | None, versions: bool, as_json: bool,
    progress: bool | None,
) -> None:
    """Rebuild state from the event log and compare.

    Every side effect is skipped. Prints what was checked and every mismatch;
    exits 1 when there is one.
    """
    client = obj.client
    if versions and key is None:
        fail("--versions needs --key", 2)
    if not len(client.registry):
        fail("no automations to replay: set GARRISON_AUTOMATIONS to the modules that define them")
    if key is None and (sys.stderr.isatty() if progress is None else progress):
        report = _replay_with_progress(obj, automation, tenant)
    else:
        report = client.replay(automation, key, tenant=tenant)
    history: list[Mismatch] = []
    checked: list[str] = []
    if versions and key is not None:
        names = [automation] if automation else [
            e.automation for e in inspect_key(client, key, tenant=tenant, history=0, limit=0).entities
            if e.automation in client.registry
        ]
        for name in names:
            checked.append(name)
            history += client.check(name, key, tenant=tenant)
    mismatches = [*report.mismatches, *history]
    if as_json:
        click.echo(json.dumps({
            "entities": report.entities, "events": report.events, "ok": not mismatches, "skipped": report.skipped,
            "from_snapshots": report.from_snapshots,
            "mismatches": [asdict(m) for m in report.mismatches],
            "versions_checked": checked, "version_mismatches": [asdict(m) for m in history],
        }, indent=2, sort_keys=True))
    else:
        verdict = "every stored state reproduced" if report.ok else f"{len(report.mismatches)} mismatched"
        summary = f"{_count(report.entities, 'entity', 'entities')}, {_count(report.events, 'event')}"
        click.echo(f"checked {summary}: {verdict}")
        if report.from_snapshots:
            click.echo(f"{_count(report.from_snapshots, 'entity', 'entities')} replayed from the oldest state version "
                       "kept (retention deleted their oldest events)")
        for name in report.skipped:
            click.echo(f"skipped {name}: its state may change outside the event log (not rebuilt from it)")
        for m in report.mismatches:
            click.echo(_mismatch_line(m))
        for name in checked:
            found = [m for m in history if m.automation == name]
            verdict = "every version reproduced" if not found else f"{len(found)} versions not reproduced"
            click.echo(f"version history of {name} at {key!r}: {verdict}")
        for m in history:
            click.echo(_mismatch_line(m))
    if mismatches:
        raise click.exceptions.Exit(1)


def _replay_with_progress(obj: Context, automation: str | None, tenant: str | None) -> ReplayReport:
    """The replay of every entity, key by key so a bar can follow it: the same check, the same report."""
    client = obj.client
    report = ReplayReport()
    names = [client.registry.get(automation).name] if automation else [a.name for a in client.registry]
    for name in names:
        if not client.registry.get(name).replayable:
            report.skipped.append(name)
            continue
        with progress_bar(f"replay {name}", count_entities(client, name, tenant=tenant), show=True) as bar:
            after = ""
            while keys := entity_keys(client, name, tenant=tenant, after=after):
                for key in keys:
                    part = client.replay(name, key, tenant=tenant)
                    report.entities += part.entities
                    report.events += part.events
                    report.mismatches += part.mismatches
                    report.from_snapshots += part.from_snapshots
                    bar.update(1)
                after = keys[-1]
    return report


@click.command()
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--window", default="1m", show_default=True, help="Rates over this last span: 30s, 5m, 1h.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
@reports_errors
def stats(obj: Context, tenant: str | None, window: str, as_json: bool) -> None:
    """Figures of a tenant, read from the database.

    Events ingested per second over the window, messages waiting past their key's cursor (and how long
    the oldest has waited), timers overdue and coming due, effects not done, failures waiting for a retry
    (per automation) and pulse slots fanning out.
    """
    span = parse_duration(window + "s" if window.strip().replace(".", "", 1).isdigit() else window, field="window")
    found = collect_stats(obj.client, tenant=tenant, window=span.total_seconds())
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render.stats_report(found))


@click.command("watch")
@click.argument("name")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for a slot to start when none is running.")
@click.option("--timeout", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Give up (exit 1) when the slot still runs after this many seconds; 0: never.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              help="Seconds between reads of the slot's progress.")
@click.option("--progress/--no-progress", default=None,
              help="The progress bar on stderr (default: when stderr is a terminal).")
@pass_context
@reports_errors
def watch(
    obj: Context, name: str, tenant: str | None, wait: float, timeout: float, interval: float,
    progress: bool | None,
) -> None:
    """Follow a pulse's running slot until it is done: a bar of the entities sent (done / total).

    Prints the slot's final progress; exits 1 when --timeout passed first.
    """
    client = obj.client
    if tenant is None:
        given = click.get_current_context().meta.get(TENANT_KEY)
        tenant = given if isinstance(given, str) else None
    deadline = time.monotonic() + wait
    while True:
        pulse = client.pulse(name, tenant=tenant)
        slot = next((s for s in pulse.slots if s.status == "running"), None)
        if slot is not None or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if slot is None:
        last = f"last slot {render.cell(pulse.last.slot)} {pulse.last.progress}" if pulse.last else "never fired"
        click.echo(f"pulse {name!r}: no slot running; {last}")
        return
    give_up = time.monotonic() + timeout
    with progress_bar(f"pulse {name} @ {render.cell(slot.slot)}", slot.total, show=progress) as bar:
        while True:
            bar.update(slot.done - bar.pos)
            if slot.status != "running" or (timeout and time.monotonic() >= give_up):
                break
            time.sleep(interval)
            slot = next((s for s in client.pulse(name, tenant=tenant).slots if s.id == slot.id), slot)
    click.echo(f"pulse {name!r} slot {render.cell(slot.slot)}: {slot.progress}")
    if slot.status == "running":
        fail(f"slot still running after {timeout:g}s", 1)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _mismatch_line(m: Mismatch) -> str:
    where = f"{m.automation} {m.key!r}" + (f" v{m.version}" if m.version is not None else "")
    return f"  mismatch {where}: stored {render.cell(m.stored)}  replayed {render.cell(m.replayed)}"


@click.command()
@click.argument("target", metavar="[FAILURE_ID | failure/ID | run/ID]", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every failure still failed (of --automation).")
@click.option("--automation", help="With --all: only this automation's failures.")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@pass_context
@reports_errors
def retry(obj: Context, target: str | None, retry_all: bool, automation: str | None, tenant: str | None) -> None:
    """Apply failed messages again, or re-execute a failed journey run.

    Once the cause is fixed: `retry FAILURE_ID` (or `failure/ID`), `retry --all`, or `retry run/ID`.

    A failure's message is ingested anew for the same automation and key, so it applies after what is
    there now; for an entity halted at it (on_failure="halt") it applies again in place, then the
    messages that waited (`garrison skip FAILURE_ID` passes over it instead). A run is re-executed from
    its history, in order with the key's other messages.
    Failure and run ids are shown by `garrison inspect KEY`; runs by `garrison runs`.
    """
    if (target is None) == (not retry_all):
        fail("give a FAILURE_ID or --all (or a run/ID to retry a journey run), not both", 2)
    if automation and not retry_all:
        fail("--automation goes with --all", 2)
    client = obj.client
    if target is not None and target.strip().startswith("run/"):
        run_id = _run_id(target)
        event = client.retry_run(run_id, tenant=tenant)
        click.echo(
            f"run/{run_id} retry sent as event {event.id} ({event.target} for key {event.key!r}, seq {event.seq}); "
            f"see it with: garrison inspect {_quote(event.key)}"
        )
        return
    ids = [_failure_id(target)] if target is not None else client.failures(tenant=tenant, automation=automation)
    if not ids:
        click.echo("no failures to retry")
        return
    for fid in ids:
        event = client.retry(fid, tenant=tenant)
        click.echo(f"failure {fid} retried as event {event.id} ({event.name} for key {event.key!r}, seq {event.seq})")


def _failure_id(text: str) -> int:
    """``12`` or ``failure/12`` -> 12; anything else is refused (exit 2)."""
    value = text.strip()
    value = value[len("failure/"):] if value.startswith("failure/") else value
    if not value.isdigit():
        fail(f"{text!r} is not a failure id (ID or failure/ID) nor a run id (run/ID)", 2)
    return int(value)


def _run_id(text: str) -> int:
    """``12`` or ``run/12`` -> 12; anything else is refused (exit 2)."""
    value = text.strip()
    value = value[len("run/"):] if value.startswith("run/") else value
    if not value.isdigit():
        fail(f"{text!r} is not a run id (run/ID)", 2)
    return int(value)


def _quote(text: str) -> str:
    return shlex.quote(text)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", metavar="TEXT", help="Why (kept as the run's error message).")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@pass_context
@reports_errors
def cancel(obj: Context, run_id: str, reason: str | None, tenant: str | None) -> None:
    """Cancel a journey run (run/ID).

    Its timers are cancelled and it never runs again. A run that is waiting, sleeping, stepping, running
    or failed can be cancelled; the cancel is applied in order with the key's other messages.
    """
    number = _run_id(run_id)
    event = obj.client.cancel_run(number, tenant=tenant, reason=reason)
    click.echo(
        f"run/{number} cancel sent as event {event.id} ({event.target} for key {event.key!r}, seq {event.seq})"
        + (f": {reason}" if reason else "")
    )


@click.command()
@click.option("--status", type=click.Choice(STATUSES), help="Only runs in this status.")
@click.option("--journey", "--automation", "journey", help="Only this journey's runs.")
@click.option("--key", help="Only this key's runs.")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--limit", default=50, show_default=True, help="At most this many runs (the newest).")
@click.option("--full", is_flag=True, help="Do not cut long results and errors.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field of each run) instead of a table.")
@pass_context
@reports_errors
def runs(
    obj: Context, status: str | None, journey: str | None, key: str | None, tenant: str | None, limit: int,
    full: bool, as_json: bool,
) -> None:
    """List journey runs, newest first.

    Each with what it waits for, its result or its error. `garrison inspect KEY` shows a run's calls,
    timers and log; `garrison retry run/ID` and `garrison cancel run/ID` operate it.
    """
    if limit < 1:
        fail("--limit must be at least 1", 2)
    found = obj.client.runs(automation=journey, key=key, status=status, tenant=tenant, limit=limit)
    if as_json:
        click.echo(json.dumps([jsonable(asdict(r)) for r in found], indent=2, sort_keys=True))
        return
    if not found:
        click.echo("no runs" + _filters(status=status, journey=journey, key=key))
        return
    click.echo(render.runs_table(found, width=None if full else render.CELL_WIDTH))
    failed = [r for r in found if r.status == "failed"]
    if failed:
        click.echo(f"\nretry a failed run with: garrison retry {failed[0].label}")


def _filters(**given: str | None) -> str:
    shown = ", ".join(f"{name} {value!r}" for name, value in given.items() if value is not None)
    return f" ({shown})" if shown else ""


@click.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=Path(".garrison-demo"), show_default=True,
    help="Where the demo keeps its database, broker and logs (emptied first).",
)
@click.option(
    "--name", type=click.Choice(["onboarding", "support"]), default="onboarding", show_default=True,
    help="Which demo: the events seed's onboarding journey, or casern's support inquiry.",
)
def demo(directory: Path, name: str) -> None:
    """Run a demo end to end: a real worker on SQLite, no server needed.

    onboarding (the default): the events seed's journey for user1 in real time (about 21 s), on a
    worker with beat; each event and each line the journey logs is printed as it is stored.

    support: casern's support inquiry; one person responds in time, the other times out and support
    gets one email.
    """
    from garrison.demo.runner import run

    code = run(directory, name=name, out=click.echo)
    if code:
        raise click.exceptions.Exit(code)


def register(group: click.Group) -> None:
    for command in (inspect_command, replay, retry, runs, cancel, stats, demo):
        group.add_command(command)


__all__ = ["cancel", "demo", "inspect_command", "register", "replay", "retry", "runs", "stats", "watch"]
