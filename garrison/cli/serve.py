"""``garrison serve``: HTTP ingest (``POST /events``), the console (``/console``) and Prometheus metrics
(``/metrics``), run with uvicorn. ``garrison console`` is the same server, announced by its console."""

from __future__ import annotations

import click

from garrison.cli.commands import Context, fail, pass_context, reports_errors

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("-l", "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
                      help="uvicorn's log level (default: GARRISON_LOG_LEVEL).")(fn)
    fn = click.option("--port", type=click.IntRange(1, 65535), help="Port (default: GARRISON_HTTP_PORT, 8000).")(fn)
    return click.option("--host", help="Interface to listen on (default: GARRISON_HTTP_HOST, 127.0.0.1).")(fn)


@click.command()
@_options
@pass_context
@reports_errors
def serve(obj: Context, host: str | None, port: int | None, log_level: str | None) -> None:
    """Serve HTTP ingest (POST /events), the console (/console) and metrics (/metrics).

    Each API key belongs to one tenant: GARRISON_API_KEYS=tenant:key[,tenant:key...]. Clients send
    `Authorization: Bearer <key>` or `X-API-Key: <key>`; the console signs in with the same keys
    (read-only), or with GARRISON_ADMIN_KEYS for its actions.

    \b
    GARRISON_API_KEYS="acme:$(openssl rand -hex 32)" garrison serve --port 8000

    For several processes use uvicorn itself: `uvicorn --factory garrison.http:create_app --workers 4`.
    """
    _run(obj, host, port, log_level, "HTTP ingest")


@click.command()
@_options
@pass_context
@reports_errors
def console(obj: Context, host: str | None, port: int | None, log_level: str | None) -> None:
    """Serve the console at /console: overview, keys, runs as timelines, failures, pulses.

    The same server as `garrison serve`. Sign in with an API key (read-only) or an admin key
    (GARRISON_ADMIN_KEYS: retry, cancel, pause, resume).
    """
    _run(obj, host, port, log_level, "console")


def _run(obj: Context, host: str | None, port: int | None, log_level: str | None, what: str) -> None:
    from garrison.http import ApiKeys, create_app, require

    uvicorn = require("uvicorn")
    settings = obj.settings
    app = create_app(obj.client)  # a ConfigurationError (no keys, a bad module) stops here, before binding
    if not len(obj.client.registry) and not settings.ingest_only:
        fail("no automations: set GARRISON_AUTOMATIONS to the modules that define them (the server checks each "
             "event's target against them), or GARRISON_INGEST_ONLY=true to ingest without checking")
    host = host or settings.http_host
    port = port or settings.http_port
    tenants = ", ".join(ApiKeys.from_settings(settings).tenants)
    if what == "console":
        click.echo(f"garrison console on http://{host}:{port}/console (tenants: {tenants})", err=True)
    else:
        click.echo(f"garrison HTTP ingest on http://{host}:{port} (tenants: {tenants}); console at /console, "
                   "docs at /docs", err=True)
    uvicorn.run(app, host=host, port=port, log_level=(log_level or settings.log_level).lower())
