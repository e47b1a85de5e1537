"""``garrison skip`` (pass over a failed message for good) and ``garrison automations`` (what the fleet
runs, and retiring an automation no worker will run again)."""

from __future__ import annotations

import json

import click

from garrison.cli.commands import Context, fail, pass_context, reports_errors
from garrison.core import fleet
from garrison.ops import render


@click.command()
@click.argument("failure", metavar="FAILURE_ID")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@pass_context
@reports_errors
def skip(obj: Context, failure: str, tenant: str | None) -> None:
    """Pass over a failed message for good.

    An entity halted at it (an automation with on_failure="halt") goes on with the messages that waited
    after it; `garrison retry FAILURE_ID` applies it again instead. Ids are shown by `garrison inspect KEY`.
    """
    value = failure.strip().removeprefix("failure/")
    if not value.isdigit():
        fail(f"{failure!r} is not a failure id (ID or failure/ID)", 2)
    after = obj.client.skip(int(value), tenant=tenant)
    click.echo(f"failure {value} skipped; its entity goes on after seq {after}")


@click.group()
def automations() -> None:
    """The automations the fleet's workers registered, and retiring one.

    Every worker registers its automations when it starts and while it runs. A message meant for an
    automation that some live worker has is never consumed by a worker without it: it waits for one that
    has it (a rolling deploy). An automation no worker has registered for GARRISON_AUTOMATION_TTL is taken
    as retired; `garrison automations retire NAME` retires one at once (after a deploy that removed it).
    """


@automations.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
@reports_errors
def list_command(obj: Context, as_json: bool) -> None:
    """List the registered automations: style, last worker, last seen, live or retired."""
    client = obj.client
    now = client.clock.now()
    found = fleet.list_automations(client.db)
    ttl = client.settings.automation_ttl
    if as_json:
        click.echo(json.dumps([
            {"name": a.name, "style": a.style, "names": a.route.to_json()["names"], "holder": a.holder,
             "last_seen_at": a.last_seen_at.isoformat(), "live": a.live(now, ttl),
             "retired_at": None if a.retired_at is None else a.retired_at.isoformat()}
            for a in found
        ], indent=2))
        return
    if not found:
        click.echo("no automation registered yet (workers register theirs when they start)")
        return
    click.echo(render.table(
        ("AUTOMATION", "STYLE", "LAST WORKER", "LAST SEEN", "STATE"),
        [(a.name, a.style, a.holder, a.last_seen_at,
          "retired" if a.retired_at is not None else "live" if a.live(now, ttl) else "expired") for a in found],
        width=None,
    ))


@automations.command("retire")
@click.argument("name")
@pass_context
@reports_errors
def retire(obj: Context, name: str) -> None:
    """Retire an automation: messages meant for it stop waiting for a worker that has it.

    Entities of it stay as they are (a worker that registers it again catches them up).
    """
    client = obj.client
    if not fleet.retire(client.db, name, client.clock.now()):
        fail(f"no automation named {name!r} is registered (see garrison automations list)")
    click.echo(f"automation {name!r} retired")
