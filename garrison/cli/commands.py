"""The ``garrison`` command: set up the database, run workers and beat, ingest, inspect, replay, retry; list,
retry and cancel journey runs.

Settings come from ``garrison.config.Settings.from_env()``; the global options override single fields.
Errors a user can fix print one line (``error: ...``) and exit 2 for bad input or settings, 1 otherwise.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from garrison import __version__
from garrison.client import Garrison
from garrison.config import Settings
from garrison.errors import ConfigurationError, GarrisonError, ValidationError

P = ParamSpec("P")
R = TypeVar("R")

SERVICE_COMMANDS = {"worker", "beat"}


@dataclass
class Context:
    """What the group hands its commands: the overrides, and the settings and client built from them."""

    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _client: Garrison | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env(**self.overrides)
        return self._settings

    @property
    def client(self) -> Garrison:
        if self._client is None:
            self._client = Garrison(self.settings)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.db.dispose()


pass_context = click.make_pass_decorator(Context)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def reports_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn garrison's errors into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ValidationError as exc:
            fail(f"{exc.message} (field: {exc.field})", 2)
        except ConfigurationError as exc:
            where = f" (setting: {exc.context['field']})" if exc.context.get("field") else ""
            fail(f"{exc.message}{where}", 2)
        except GarrisonError as exc:
            fail(str(exc), 1)

    return wrapper


class _EchoHandler(logging.Handler):
    """Warnings (a broker that is down, say) as one line on stderr each, without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        # kombu warns that ``filesystem://`` (the embedded default) names no host; that transport needs none.
        return not (record.name == "kombu.connection" and record.getMessage().startswith("No hostname"))

    def emit(self, record: logging.LogRecord) -> None:
        error = f" ({record.exc_info[1]!r})" if record.exc_info and record.exc_info[1] else ""
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}{error}", err=True)


def _log_warnings(ctx: click.Context) -> None:
    """Show warnings while the command runs (worker and beat have Celery's logging instead)."""
    root = logging.getLogger()
    if not any(isinstance(h, _EchoHandler) for h in root.handlers):
        handler = _EchoHandler(logging.WARNING)
        root.addHandler(handler)
        ctx.call_on_close(lambda: root.removeHandler(handler))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", metavar="URL", help="Overrides GARRISON_DATABASE_URL.")
@click.option("--broker-url", metavar="URL", help="Overrides GARRISON_BROKER_URL.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Overrides GARRISON_DATA_DIR.")
@click.option("--automations", metavar="MODULES", help="Overrides GARRISON_AUTOMATIONS (comma separated modules).")
@click.version_option(__version__, prog_name="garrison")
@click.pass_context
def cli(
    ctx: click.Context, database_url: str | None, broker_url: str | None, data_dir: Path | None,
    automations: str | None,
) -> None:
    """garrison: many small, persistent, per-entity automations on a Celery worker fleet.

    Settings come from GARRISON_* environment variables; the options above override them.
    Start with `garrison demo`.
    """
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if broker_url:
        overrides["broker_url"] = broker_url
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if automations is not None:
        overrides["automations"] = tuple(m.strip() for m in automations.split(",") if m.strip())
    ctx.obj = Context(overrides)
    ctx.call_on_close(ctx.obj.close)
    if ctx.invoked_subcommand not in SERVICE_COMMANDS:
        _log_warnings(ctx)


# -- database ---------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Manage garrison's tables."""


@db.command("init")
@pass_context
@reports_errors
def db_init(obj: Context) -> None:
    """Create garrison's tables (those that exist are left as they are)."""
    obj.client.init_db()
    click.echo(f"garrison tables ready in {_safe_url(obj.settings.database_url)}")


def _safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


# -- worker and beat --------------------------------------------------------------------------------

CELERY_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def _export(settings: Settings) -> None:
    """Hand the settings (with the command line's overrides) to ``garrison.tasks``, which reads them
    from the environment at import, as ``celery -A garrison.tasks`` needs, and to pool children."""
    os.environ.update(settings.as_env())


@cli.command(context_settings=CELERY_PASSTHROUGH)
@click.option("-c", "--concurrency", type=int, help="Worker processes or threads (default: CPU count).")
@click.option("-l", "--loglevel", help="Log level (default: GARRISON_LOG_LEVEL).")
@click.option("-P", "--pool", help="Pool: prefork (default), solo, threads, ...")
@click.option("-B", "--beat", is_flag=True, help="Also run beat (the relay) in this worker. Only in ONE process.")
@click.option("-n", "--hostname", help="Worker name, e.g. w1@%h.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
@reports_errors
def worker(
    obj: Context, concurrency: int | None, loglevel: str | None, pool: str | None, beat: bool,
    hostname: str | None, celery_args: tuple[str, ...],
) -> None:
    """Run a worker that applies messages and performs effects.

    This is `celery -A garrison.tasks worker` with garrison's settings.

    Any further options go to Celery as they are, e.g. `garrison worker -c 4 -- --max-tasks-per-child 100`.
    """
    settings = obj.settings
    argv = ["worker", "--loglevel", loglevel or settings.log_level]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if pool:
        argv += ["--pool", pool]
    if beat:
        argv.append("--beat")
    if hostname:
        argv += ["--hostname", hostname]
    argv += celery_args
    _export(settings)
    from garrison.tasks import app

    sys.exit(app.start(argv) or 0)


@cli.command(context_settings=CELERY_PASSTHROUGH)
@click.option("-l", "--loglevel", help="Log level (default: GARRISON_LOG_LEVEL).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
@reports_errors
def beat(obj: Context, loglevel: str | None, celery_args: tuple[str, ...]) -> None:
    """Run beat (the relay's schedule). Run exactly one.

    This is `celery -A garrison.tasks beat` with garrison's settings.
    """
    settings = obj.settings
    _export(settings)
    from garrison.tasks import app

    sys.exit(app.start(["beat", "--loglevel", loglevel or settings.log_level, *celery_args]) or 0)


# -- ingest -----------------------------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.argument("key")
@click.argument("data", metavar="JSON", default="{}")
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT).")
@click.option("--idempotency-key", help="The same key twice (per tenant) stores the event once.")
@click.option("--target", metavar="AUTOMATION", help="Deliver to this automation only (a machine's reducer name).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored event as JSON.")
@pass_context
@reports_errors
def ingest(
    obj: Context, name: str, key: str, data: str, tenant: str | None, idempotency_key: str | None,
    target: str | None, as_json: bool,
) -> None:
    """Store an event and wake its automations.

    Stores event NAME for KEY with JSON data (`-` reads it from stdin).

    \b
    garrison ingest initialInquiry ryan '{"name": "Ryan", "when": 1700000000}' --target support
    """
    text = sys.stdin.read() if data == "-" else data
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"data is not valid JSON: {exc}", field="data") from exc
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


def _check_target(client: Garrison, target: str, name: str) -> None:
    from garrison.automations.machine import Machine

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

