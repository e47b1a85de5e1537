"""``garrison pulses``: list pulse schedules with their progress; add, pause, resume, remove, show.

Errors print one line (``error: ...``): a bad definition (cron, timezone, interval, policy, JSON, an
unknown automation or reducer) exits 2 naming the option; an unknown pulse name exits 1. Times are UTC.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from garrison.cli.commands import Context, fail, pass_context, reports_errors
from garrison.errors import DefinitionError, UnknownAutomation, ValidationError
from garrison.ops import render
from garrison.ops.inspect import jsonable
from garrison.pulses.admin import PulseInfo
from garrison.pulses.schedules import MISSED, OVERLAP

TENANT = click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
TENANT_KEY = "garrison.pulses.tenant"
# The option of `pulses add` each part of a definition comes from.
OPTIONS = {"name": "NAME", "missed_limit": "--missed-limit", "reducer": "--message"}


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _last(p: PulseInfo) -> str:
    return f"{p.last.progress} @ {_when(p.last.slot)}" if p.last else "never fired"


def _tenant(tenant: str | None) -> str | None:
    """A subcommand's --tenant, else the group's."""
    if tenant is not None:
        return tenant
    value = click.get_current_context().meta.get(TENANT_KEY)
    return value if isinstance(value, str) else None


def _option(part: str) -> str:
    return OPTIONS.get(part, "--" + part.replace("_", "-"))


def _print(p: PulseInfo) -> None:
    click.echo(json.dumps(jsonable(asdict(p)), indent=2, sort_keys=True))


@click.group("pulses", invoke_without_command=True)
@TENANT
@JSON
@click.pass_context
def pulses(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Pulse schedules (checkTimeout to every entity on a cron or an interval), with their progress.

    Without a subcommand: list them. Beat (`garrison beat`) fires them; one added here fires from its
    next tick, without a restart.
    """
    if ctx.invoked_subcommand is not None:
        ctx.meta[TENANT_KEY] = tenant  # `garrison pulses --tenant T show P` acts for T too
        return
    obj = ctx.find_object(Context)
    assert obj is not None
    _list(obj, tenant, as_json)


@reports_errors
def _list(obj: Context, tenant: str | None, as_json: bool) -> None:
    found = obj.client.pulses(tenant=tenant)
    if as_json:
        click.echo(json.dumps([jsonable(asdict(p)) for p in found], indent=2, sort_keys=True))
        return
    if not found:
        click.echo("no pulses (add one with: garrison pulses add NAME --automation A --message M --cron EXPR)")
        return
    click.echo(render.table(
        ["NAME", "AUTOMATION", "MESSAGE", "WHEN", "STATE", "NEXT", "LAST SLOT"],
        [(p.name, p.automation, p.message, p.when, "paused" if p.paused else "active", _when(p.next_slot), _last(p))
         for p in found],
        indent="",
    ))


@pulses.command("show")
@click.argument("name")
@TENANT
@JSON
@pass_context
@reports_errors
def show(obj: Context, name: str, tenant: str | None, as_json: bool) -> None:
    """One pulse and its last 10 slots (status, entities done / total, why a slot was skipped)."""
    p = obj.client.pulse(name, tenant=_tenant(tenant))
    if as_json:
        _print(p)
        return
    click.echo(f"pulse {p.name!r}  tenant {p.tenant!r}  {p.automation}.{p.message}  {p.when}  "
               f"{'paused' if p.paused else 'active'}  ({p.source})")
    click.echo(f"next slot {_when(p.next_slot)} UTC  missed={p.missed}"
               + (f" (limit {p.missed_limit})" if p.missed == "all" else "") + f"  overlap={p.overlap}"
               + (f"  where {json.dumps(p.where, sort_keys=True)}" if p.where else "")
               + (f"  data {json.dumps(p.data, sort_keys=True)}" if p.data else ""))
    if not p.slots:
        click.echo("no slot fired yet")
        return
    click.echo(render.table(
        ["SLOT", "STATUS", "STARTED", "FINISHED"],
        [(_when(s.slot), s.progress, _when(s.started_at), _when(s.finished_at)) for s in p.slots],
        width=None, indent="",
    ))


@pulses.command("add")
@click.argument("name")
@click.option("--automation", required=True, help="The automation (machine) to pulse.")
@click.option("--message", required=True, help="The message (reducer) each entity gets.")
@click.option("--cron", help="A cron expression: five fields, or six with seconds last.")
@click.option("--every", help="An interval instead of cron: 30s, 5m, 1h.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA timezone the cron expression runs in.")
@click.option("--data", default="{}", help="JSON data sent with each pulse (plus now and slot).")
@click.option("--where", help='JSON filter on the entity state, e.g. {"status": ["inquired"]}.')
@click.option("--missed", type=click.Choice(MISSED), default="latest", show_default=True,
              help="Slots missed while no beat ran: fire the latest, all (up to --missed-limit), or skip.")
@click.option("--missed-limit", type=int, default=100, show_default=True,
              help="With --missed all: at most this many.")
@click.option("--overlap", type=click.Choice(OVERLAP), default="skip", show_default=True,
              help="A slot due while the previous one still runs: skip it (recorded) or allow it.")
@TENANT
@JSON
@pass_context
@reports_errors
def add(
    obj: Context, name: str, automation: str, message: str, cron: str | None, every: str | None, timezone: str,
    data: str, where: str | None, missed: str, missed_limit: int, overlap: str, tenant: str | None, as_json: bool,
) -> None:
    """Add a pulse schedule, or replace the one of that name (it keeps its paused flag, and its next slot
    unless the timing changed). Beat fires it from its next tick, without a restart."""
    payload = _json(data, "--data")
    filter_ = _json(where, "--where") if where else None
    try:
        p = obj.client.add_pulse(
            name, automation, message, cron=cron, every=every, timezone=timezone, data=payload, where=filter_,
            missed=missed, missed_limit=missed_limit, overlap=overlap, tenant=_tenant(tenant),
        )
    except DefinitionError as exc:
        fail(f"{exc.message} (option: {_option(str(exc.context.get('part', 'cron')))})", 2)
    except UnknownAutomation as exc:
        fail(f"{exc.message} (option: --automation)", 2)
    except ValidationError as exc:
        fail(f"{exc.message} (option: {_option(str(getattr(exc, 'field', 'reducer')))})", 2)
    if as_json:
        _print(p)
        return
    click.echo(f"pulse {p.name!r}: {p.automation}.{p.message} {p.when}; next slot {_when(p.next_slot)} UTC"
               + (" (paused)" if p.paused else ""))


@pulses.command("pause")
@click.argument("name")
@TENANT
@JSON
@pass_context
@reports_errors
def pause(obj: Context, name: str, tenant: str | None, as_json: bool) -> None:
    """Stop firing a pulse (a slot already running finishes)."""
    p = obj.client.pause_pulse(name, tenant=_tenant(tenant))
    if as_json:
        _print(p)
        return
    click.echo(f"pulse {p.name!r} paused")


@pulses.command("resume")
@click.argument("name")
@TENANT
@JSON
@pass_context
@reports_errors
def resume(obj: Context, name: str, tenant: str | None, as_json: bool) -> None:
    """Fire a paused pulse again, from its first slot after now (the slots of the pause are not fired late)."""
    p = obj.client.resume_pulse(name, tenant=_tenant(tenant))
    if as_json:
        _print(p)
        return
    click.echo(f"pulse {p.name!r} resumed; next slot {_when(p.next_slot)} UTC")


@pulses.command("remove")
@click.argument("name")
@TENANT
@pass_context
@reports_errors
def remove(obj: Context, name: str, tenant: str | None) -> None:
    """Delete a pulse schedule (its slots stay as history; a pulse defined in code comes back)."""
    obj.client.remove_pulse(name, tenant=_tenant(tenant))
    click.echo(f"pulse {name!r} removed")


def _json(text: str, option: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option} is not JSON: {exc.msg}", 2)
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object", 2)
    return value
