"""The ``garrison`` command group, what its commands share (the settings and client they are handed, one-line
errors), and ``worker`` and ``beat``. The other commands live in their own modules (``db``, ``ingest``,
``operate``, ``pulses``, ``serve``) and are added to the group in ``garrison.cli``.

Settings come from ``garrison.config.Settings.from_env()``; the global options override single fields.
Errors a user can fix print one line (``error: ...``) and exit 2 for bad input or settings, 1 otherwise.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from garrison import __version__
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.db import explain, safe_url
from garrison.errors import ConfigurationError, DatabaseUnavailable, GarrisonError, ValidationError
from garrison.logs import ContextFilter, JsonFormatter, context_suffix

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

    @property
    def log_format(self) -> str:
        """``GARRISON_LOG_FORMAT``; ``text`` while the settings cannot be read (that error is reported)."""
        try:
            return self.settings.log_format
        except GarrisonError:
            return "text"


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
        except DatabaseUnavailable as exc:
            fail(explain(exc, _database_url()) or str(exc), 2)
        except GarrisonError as exc:
            fail(str(exc), 1)
        except DBAPIError as exc:
            message = explain(exc, _database_url())
            if message is None:
                raise
            fail(message, 2)

    return wrapper


def _database_url() -> str:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Context) if ctx is not None else None
    try:
        return obj.settings.database_url if obj is not None else ""
    except GarrisonError:
        return ""


def check_database(settings: Settings) -> None:
    """Before a worker or beat starts: the database answers and has garrison's tables, or one line says
    what to do (rather than a traceback per task later)."""
    from sqlalchemy import select

    from garrison.core.db import Database
    from garrison.models import EVENTS

    db = Database(settings)
    try:
        with db.session() as s:
            s.execute(select(EVENTS.c.id).limit(1)).all()
    except (DBAPIError, DatabaseUnavailable) as exc:
        fail(explain(exc, settings.database_url) or f"the database at {safe_url(settings.database_url)} "
             f"cannot be used: {getattr(exc, 'orig', exc)}", 2)
    finally:
        db.dispose()


class _EchoHandler(logging.Handler):
    """Warnings (a broker that is down, say) as one line on stderr each, without a traceback, with the
    tenant / automation / key they are about; a JSON object per line under ``GARRISON_LOG_FORMAT=json``."""

    def __init__(self, obj: Context) -> None:
        super().__init__(logging.WARNING)
        self.obj = obj
        self.context = ContextFilter()

    def filter(self, record: logging.LogRecord) -> bool:
        # kombu warns that ``filesystem://`` (the embedded default) names no host; that transport needs none.
        if record.name == "kombu.connection" and record.getMessage().startswith("No hostname"):
            return False
        return self.context.filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.obj.log_format == "json":
            click.echo(JsonFormatter().format(record), err=True)
            return
        error = f" ({record.exc_info[1]!r})" if record.exc_info and record.exc_info[1] else ""
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}{error}{context_suffix(record)}", err=True)


def _log_warnings(ctx: click.Context) -> None:
    """Show warnings while the command runs (worker and beat have Celery's logging instead)."""
    root = logging.getLogger()
    if not any(isinstance(h, _EchoHandler) for h in root.handlers):
        handler = _EchoHandler(ctx.obj)
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
    check_database(settings)
    _export(settings)
    from garrison.tasks import app

    sys.exit(app.start(argv) or 0)


@cli.command(context_settings=CELERY_PASSTHROUGH)
@click.option("-l", "--loglevel", help="Log level (default: GARRISON_LOG_LEVEL).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
@reports_errors
def beat(obj: Context, loglevel: str | None, celery_args: tuple[str, ...]) -> None:
    """Run beat: the relay and the pulse schedules.

    This is `celery -A garrison.tasks beat` with garrison's settings and scheduler. A second beat is
    safe: only the holder of the fleet's SQL lease opens pulse slots, and it takes over when the first dies.
    """
    settings = obj.settings
    check_database(settings)
    _export(settings)
    from garrison.tasks import app

    sys.exit(app.start(["beat", "--loglevel", loglevel or settings.log_level, *celery_args]) or 0)
