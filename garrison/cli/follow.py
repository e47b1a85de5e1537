"""``garrison follow``: print state changes as they are stored, and resume after a cursor."""

from __future__ import annotations

import json

import click

from garrison.cli.commands import Context, pass_context, reports_errors
from garrison.core.feed import Change
from garrison.ops import render


@click.command()
@click.argument("automation", required=False)
@click.option("--since", metavar="CURSOR", help="Resume after this change's cursor; `now` for only later changes "
              "(default: from the oldest version kept).")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--once", is_flag=True, help="Print what is stored and exit instead of waiting for more.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Exit after this many seconds without a change.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change (with its cursor).")
@click.option("--full", is_flag=True, help="Do not cut long states.")
@pass_context
@reports_errors
def follow(
    obj: Context, automation: str | None, since: str | None, tenant: str | None, once: bool,
    idle_timeout: float | None, as_json: bool, full: bool,
) -> None:
    """Print every state change of the tenant (of AUTOMATION, or all), in order.

    Each line ends with the change's cursor: `garrison follow --since CURSOR` resumes right after it,
    missing and repeating nothing. Waits for new changes until interrupted (Ctrl-C), unless --once.
    """
    with obj.client.follow(automation, since=since, tenant=tenant, wait=not once, idle_timeout=idle_timeout) as feed:
        try:
            for change in feed:
                click.echo(json.dumps(change.to_json(), sort_keys=True) if as_json else _line(change, full))
        except KeyboardInterrupt:
            pass
        if not as_json and feed.cursor is not None:
            click.echo(f"# resume with: garrison follow --since {feed.cursor}", err=True)


def _line(change: Change, full: bool) -> str:
    width = None if full else render.CELL_WIDTH
    return (f"{render.cell(change.created_at)}  {change.automation} {change.key!r} v{change.version} "
            f"{change.message}: {render.cell(change.prev, width)} -> {render.cell(change.current, width)}  "
            f"[{change.cursor}]")
