"""Commands that look at and repair what is stored: ``inspect``, ``replay``, ``retry``; and ``demo``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from garrison.automations.replay import Mismatch
from garrison.cli import render
from garrison.cli.commands import Context, fail, pass_context, reports_errors
from garrison.inspect import inspect_key


@click.command("inspect")
@click.argument("key")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--automation", help="Only this automation's rows.")
@click.option("--history", default=20, show_default=True, help="How many recent state versions to show.")
@click.option("--limit", default=50, show_default=True, help="At most this many pending messages, failures, effects.")
@click.option("--full", is_flag=True, help="Do not cut long states and data.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@pass_context
@reports_errors
def inspect_command(
    obj: Context, key: str, tenant: str | None, automation: str | None, history: int, limit: int, full: bool,
    as_json: bool,
) -> None:
    """Show what is stored for a key.

    State per automation, version history, pending messages, failures, effects.

    Exits 1 when nothing at all is stored for the key in the tenant.
    """
    report = inspect_key(obj.client, key, tenant=tenant, automation=automation, history=history, limit=limit)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(render.key_report(report, full=full))
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
@pass_context
@reports_errors
def replay(
    obj: Context, automation: str | None, key: str | None, tenant: str | None, versions: bool, as_json: bool
) -> None:
    """Rebuild state from the event log and compare.

    Every side effect is skipped. Prints what was checked and every mismatch;
    exits 1 when there is one.
    """
    client = obj.client
    if versions and key is None:
        fail("--versions needs --key", 2)
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
            "entities": report.entities, "events": report.events, "ok": not mismatches,
            "mismatches": [asdict(m) for m in report.mismatches],
            "versions_checked": checked, "version_mismatches": [asdict(m) for m in history],
        }, indent=2, sort_keys=True))
    else:
        verdict = "every stored state reproduced" if report.ok else f"{len(report.mismatches)} mismatched"
        summary = f"{_count(report.entities, 'entity', 'entities')}, {_count(report.events, 'event')}"
        click.echo(f"checked {summary}: {verdict}")
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


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _mismatch_line(m: Mismatch) -> str:
    where = f"{m.automation} {m.key!r}" + (f" v{m.version}" if m.version is not None else "")
    return f"  mismatch {where}: stored {render.cell(m.stored)}  replayed {render.cell(m.replayed)}"


@click.command()
@click.argument("failure_id", type=int, required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every failure still failed (of --automation).")
@click.option("--automation", help="With --all: only this automation's failures.")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@pass_context
@reports_errors
def retry(obj: Context, failure_id: int | None, retry_all: bool, automation: str | None, tenant: str | None) -> None:
    """Apply failed messages again.

    Once the cause is fixed: `retry FAILURE_ID` or `retry --all`.

    The message is ingested anew for the same automation and key, so it applies after what is there now.
    Failure ids are shown by `garrison inspect KEY`.
    """
    if (failure_id is None) == (not retry_all):
        fail("give a FAILURE_ID or --all (not both)", 2)
    if automation and not retry_all:
        fail("--automation goes with --all", 2)
    client = obj.client
    ids = [failure_id] if failure_id is not None else client.failures(tenant=tenant, automation=automation)
    if not ids:
        click.echo("no failures to retry")
        return
    for fid in ids:
        event = client.retry(fid, tenant=tenant)
        click.echo(f"failure {fid} retried as event {event.id} ({event.name} for key {event.key!r}, seq {event.seq})")


@click.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=Path(".garrison-demo"), show_default=True,
    help="Where the demo keeps its database, broker and mailbox (emptied first).",
)
def demo(directory: Path) -> None:
    """Run the support-inquiry demo end to end.

    casern's example with a real worker on SQLite, no server needed.

    Two people inquire; one responds in time, the other times out and support gets an email.
    """
    from garrison.demo.runner import run

    code = run(directory, out=click.echo)
    if code:
        raise click.exceptions.Exit(code)


def register(group: click.Group) -> None:
    for command in (inspect_command, replay, retry, demo):
        group.add_command(command)


__all__ = ["demo", "inspect_command", "register", "replay", "retry"]
