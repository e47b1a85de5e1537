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
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TextIO, TypeVar

import click

from garrison import __version__
from garrison.client import Garrison
from garrison.config import Settings
from garrison.errors import ConfigurationError, GarrisonError, ValidationError
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
        except GarrisonError as exc:
            fail(str(exc), 1)

    return wrapper


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


# -- database ---------------------------------------------------------------------------------------


@cli.group()
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
    from garrison import migrate

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
    from garrison import migrate

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
    from garrison import migrate

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


def _check_schema(settings: Settings) -> None:
    from garrison import migrate

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
@click.argument("name", required=False)
@click.argument("key", required=False)
@click.argument("data", metavar="JSON", required=False)
@click.option("--tenant", help="Tenant (default: GARRISON_TENANT); with --file, of the lines that name none.")
@click.option("--idempotency-key", help="The same key twice (per tenant) stores the event once.")
@click.option("--target", metavar="AUTOMATION", help="Deliver to this automation only (a machine's reducer name).")
@click.option("--file", "source", type=click.File("r", encoding="utf-8"), metavar="PATH",
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
    from garrison.cli import render

    client = obj.client
    label = "stdin" if source.name in ("-", "<stdin>") else source.name
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
        with render.progress_bar(f"ingest {label}", size, show=progress) as bar:
            for number, line in enumerate(source, 1):
                bar.update(len(line.encode()) if size is not None else 1)
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

