"""``garrison db``: make garrison's tables ready (``init``), migrate them (``upgrade``), print their revision
(``current``), compare them with the models (``check``) and delete what retention lets go (``prune``).

Each command imports :mod:`garrison.ops.migrate` (alembic) when it runs, so the rest of the CLI starts
without it."""

from __future__ import annotations

import click

from garrison.cli.commands import Context, fail, pass_context, reports_errors
from garrison.config import Settings
from garrison.ops import render


@click.group()
def db() -> None:
    """Manage garrison's tables."""


@db.command("init")
@pass_context
@reports_errors
def db_init(obj: Context) -> None:
    """Make garrison's tables ready: `garrison db upgrade` to the latest revision.

    An empty database gets every table; one made before migrations existed is adopted; one at the
    latest revision is left as it is.
    """
    from garrison.ops import migrate

    done = migrate.upgrade(obj.settings)
    _check_schema(obj.settings)
    click.echo(f"garrison tables ready in {_safe_url(obj.settings.database_url)} (revision {done.after})")


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_context
@reports_errors
def db_upgrade(obj: Context, revision: str) -> None:
    """Migrate garrison's tables to REVISION (default: the latest). Run it on every deploy, before the
    workers start; running it again changes nothing. Two at once are safe: one waits for the other."""
    from garrison.ops import migrate

    done = migrate.upgrade(obj.settings, revision)
    url = _safe_url(obj.settings.database_url)
    if done.adopted:
        click.echo(f"adopted tables made before migrations in {url} at revision {migrate.BASELINE}")
    if done.before != done.after:
        click.echo(f"upgraded garrison tables in {url}: {done.before or 'empty'} -> {done.after}")
    elif not done.adopted:
        click.echo(f"garrison tables in {url} already at revision {done.after}; nothing to do")
    if revision == "head":
        _check_schema(obj.settings)


@db.command("current")
@pass_context
@reports_errors
def db_current(obj: Context) -> None:
    """Print the database's revision and the latest one this garrison knows."""
    from garrison.ops import migrate

    at = migrate.current(obj.settings)
    latest = migrate.head()
    state = "up to date" if at == latest else "run `garrison db upgrade`"
    click.echo(f"database at {at or 'no revision'}; latest {latest} ({state})")


@db.command("check")
@pass_context
@reports_errors
def db_check(obj: Context) -> None:
    """Exit 1 (listing the differences) when garrison's tables differ from its models."""
    _check_schema(obj.settings)
    click.echo("garrison tables match the models")


@db.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--tenant", help="Only this tenant (default: every tenant).")
@pass_context
@reports_errors
def db_prune(obj: Context, dry_run: bool, tenant: str | None) -> None:
    """Delete what the retention windows let go, now (beat does it every GARRISON_RETENTION_INTERVAL).

    Prints the rows per tenant and table. Windows are GARRISON_RETENTION_<TABLE>_DAYS (0 keeps a table's
    rows forever); each statement deletes at most GARRISON_RETENTION_BATCH rows in a short transaction.
    """
    report = obj.client.prune(tenant=tenant, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    rows = [(t, rule, n) for t, per in sorted(report.deleted.items()) for rule, n in per.items()]
    click.echo(render.table(("TENANT", "TABLE", verb.upper().replace(" ", "_")), rows) if rows else "no tenants")
    click.echo(f"{verb} {report.total} rows")


def _check_schema(settings: Settings) -> None:
    from garrison.ops import migrate

    differences = migrate.check(settings)
    if differences:
        fail("garrison's tables differ from its models:\n  " + "\n  ".join(differences), 1)


def _safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
