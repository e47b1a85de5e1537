"""``garrison serve``: HTTP ingest (``POST /events``) for services not written in Python, run with uvicorn."""

from __future__ import annotations

import click

from garrison.cli.commands import Context, fail, pass_context, reports_errors

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@click.command()
@click.option("--host", help="Interface to listen on (default: GARRISON_HTTP_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: GARRISON_HTTP_PORT, 8000).")
@click.option("-l", "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="uvicorn's log level (default: GARRISON_LOG_LEVEL).")
@pass_context
@reports_errors
def serve(obj: Context, host: str | None, port: int | None, log_level: str | None) -> None:
    """Serve HTTP ingest: POST /events, GET /healthz, the OpenAPI description at /openapi.json.

    Each API key belongs to one tenant: GARRISON_API_KEYS=tenant:key[,tenant:key...]. Clients send
    `Authorization: Bearer <key>` or `X-API-Key: <key>`.

    \b
    GARRISON_API_KEYS="acme:$(openssl rand -hex 32)" garrison serve --port 8000

    For several processes use uvicorn itself: `uvicorn --factory garrison.http:create_app --workers 4`.
    """
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
    click.echo(f"garrison HTTP ingest on http://{host}:{port} (tenants: {tenants}); docs at /docs", err=True)
    uvicorn.run(app, host=host, port=port, log_level=(log_level or settings.log_level).lower())
