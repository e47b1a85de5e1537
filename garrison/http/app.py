"""The FastAPI app: ``POST /events`` (one event or a batch), ``GET /follow`` (the change feed as
server-sent events, :mod:`garrison.http.follow`) and ``GET /healthz``.

Order of checks on ``POST /events``, each refusing before anything is written: body size (413, before
parsing), API key (401), body shape (422 naming the field, e.g. ``events[2].name``), the tenant a body
names (403), garrison's own validation (422 with its field). A batch is one transaction: all or nothing.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time, and
# they name dependencies defined inside build_app.
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from garrison import __version__
from garrison.client import Garrison
from garrison.core.ingest import IngestedEvent
from garrison.errors import CursorExpired, PayloadTooLarge, ValidationError
from garrison.http.console import build_console
from garrison.http.follow import open_feed, sse
from garrison.http.keys import ApiKeys
from garrison.http.limits import BodyLimit
from garrison.http.schemas import (
    MAX_IDEMPOTENCY_HEADER,
    BatchBody,
    ErrorCode,
    ErrorOut,
    EventBody,
    FieldError,
    HealthOut,
    IngestedOut,
    IngestRequest,
    IngestResponse,
)
from garrison.models import EVENTS

log = logging.getLogger("garrison.http")

DESCRIPTION = """Send events to garrison from any language.

Authenticate with an API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`: the key decides the
tenant. An `Idempotency-Key` header makes a retry safe: for one event it is the event's idempotency key;
for a batch, event *i* gets `<Idempotency-Key>:<i>` (an event's own `idempotency_key` wins).
"""

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`")


class Refused(Exception):
    """An answer other than 422 for a request refused before anything was written."""

    def __init__(self, status: int, error: ErrorCode, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.headers = status, error, message, field, headers


def build_app(client: Garrison, *, own_client: bool = False) -> FastAPI:
    """The app for one client. ``own_client``: dispose of the client's connections at shutdown."""
    keys = ApiKeys.from_settings(client.settings)
    if client.settings.automations:
        client.registry  # noqa: B018 -- import the automation modules now: a bad one fails at startup

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if own_client:
            client.db.dispose()

    app = FastAPI(title="garrison", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=client.settings.http_max_body_bytes)

    def presented_key(request: Request) -> str | None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return request.headers.get("x-api-key")

    def authenticate(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        _header: Annotated[str | None, Depends(api_key_header)],
    ) -> str:
        """The tenant of the request's API key. The two security dependencies put both ways of sending
        a key in the OpenAPI description; the key itself is read here, once, for both."""
        tenant = keys.tenant_for(presented_key(request))
        if tenant is None:
            raise _unauthorized()
        return tenant

    @app.exception_handler(Refused)
    async def on_refused(_: Request, exc: Refused) -> JSONResponse:
        return _error(exc.status, exc.error, exc.message, exc.field, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses the JSON before the key is checked: a caller without a valid key learns nothing
        # about its body, only that the key is wrong.
        route = request.scope.get("route")
        if getattr(route, "path", None) == "/events" and keys.tenant_for(presented_key(request)) is None:
            refused = _unauthorized()
            return _error(refused.status, refused.error, refused.message, headers=refused.headers)
        errors = [FieldError(field=(f := _field(e)), message=_message(e, f)) for e in exc.errors()]
        first = errors[0] if errors else FieldError(field="body", message="invalid request")
        return _error(422, "invalid", f"{first.field}: {first.message}", first.field, errors)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own answers (an unknown path, a wrong method, a body it could not parse) in
        garrison's error shape instead of ``{"detail": ...}``."""
        headers = dict(exc.headers) if exc.headers else None
        route = request.scope.get("route")
        if (exc.status_code == 400 and getattr(route, "path", None) == "/events"
                and keys.tenant_for(presented_key(request)) is None):
            refused = _unauthorized()
            return _error(refused.status, refused.error, refused.message, headers=refused.headers)
        if exc.status_code == 404:
            return _error(404, "not_found", f"no such endpoint: {request.method} {request.url.path} "
                          "(the API has POST /events and GET /healthz)", headers=headers)
        if exc.status_code == 405:
            return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}",
                          headers=headers)
        if exc.status_code == 400:  # answered as a body that does not parse (422), whatever the reason
            return _error(422, "invalid", "the body could not be read: send UTF-8 JSON, nested at most "
                          f"{client.settings.max_nesting} deep, with numbers JSON peers can read", "body",
                          [FieldError(field="body", message="could not be read")], headers=headers)
        return _error(exc.status_code, "invalid", str(exc.detail), headers=headers)

    @app.exception_handler(ValidationError)
    async def on_refused_by_garrison(_: Request, exc: ValidationError) -> JSONResponse:
        error: ErrorCode = "payload_too_large" if isinstance(exc, PayloadTooLarge) else "invalid"
        field = str(exc.context.get("field") or "body")
        return _error(422, error, exc.message, field, [FieldError(field=field, message=exc.message)])

    @app.post(
        "/events",
        status_code=202,
        response_model=IngestResponse,
        summary="Ingest one event or a batch",
        description="Stores the events in SQL (one transaction) and wakes the automations that take them. "
        "202: stored; the workers apply them asynchronously.",
        responses={
            401: {"model": ErrorOut, "description": "Missing or unknown API key. Nothing was written."},
            403: {"model": ErrorOut, "description": "The body names another tenant than the key's."},
            413: {"model": ErrorOut, "description": "The body is over GARRISON_HTTP_MAX_BODY_BYTES."},
            422: {"model": ErrorOut, "description": "A field was refused; `field` names it. Nothing was written."},
        },
        tags=["ingest"],
    )
    def post_events(
        body: Annotated[IngestRequest, Body()],
        tenant: Annotated[str, Depends(authenticate)],
        idempotency_key: Annotated[
            str | None,
            Header(alias="Idempotency-Key", min_length=1, max_length=MAX_IDEMPOTENCY_HEADER,
                   description="Makes a retry safe. For a batch, event i's key is `<Idempotency-Key>:<i>`."),
        ] = None,
    ) -> IngestResponse:
        stored = ingest(client, tenant, body, idempotency_key)
        return IngestResponse(tenant=tenant, events=[_out(e) for e in stored])

    @app.get(
        "/follow",
        summary="Follow state changes (server-sent events)",
        description="Every stored state version of the API key's tenant (of one `automation`, or all), in order, "
        "as `text/event-stream`: one `change` event each, whose `id` is its cursor. Resume after a change "
        "with `since=<cursor>` or the `Last-Event-ID` header (what EventSource sends when it reconnects); "
        "`since=now` starts with what is committed from now on. `wait=false` ends the stream once caught up.",
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The stream of changes."},
            401: {"model": ErrorOut, "description": "Missing or unknown API key."},
            404: {"model": ErrorOut, "description": "The cursor is behind what retention deleted."},
            422: {"model": ErrorOut, "description": "`since` is not a cursor."},
        },
        tags=["follow"],
    )
    def follow(
        tenant: Annotated[str, Depends(authenticate)],
        automation: Annotated[str | None, Query(description="Only this automation's changes.")] = None,
        since: Annotated[str | None, Query(description="A change's cursor, or `now`.")] = None,
        wait: Annotated[bool, Query(description="Keep the stream open for new changes.")] = True,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        try:
            feed = open_feed(client, tenant, automation, last_event_id or since, wait)
        except CursorExpired as exc:
            raise Refused(404, "expired", exc.message, "since") from exc
        return StreamingResponse(sse(feed), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(
        "/healthz",
        response_model=HealthOut,
        summary="Is the database reachable?",
        responses={503: {"model": HealthOut, "description": "The database is not reachable."}},
        tags=["health"],
    )
    def healthz() -> Any:
        try:
            with client.db.session() as s:
                # garrison's own table, so a database without `garrison db init` is not reported healthy.
                s.execute(select(EVENTS.c.id).where(EVENTS.c.tenant == client.settings.tenant).limit(1))
        except Exception as exc:  # any failure means unhealthy; the log has the details
            log.warning("health check failed", exc_info=True)
            return JSONResponse(status_code=503, content={"status": "unavailable",
                                                          "database": type(exc).__name__})
        return HealthOut(status="ok", database="ok")

    admins = ApiKeys.parse(client.settings.admin_keys)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request, window: float = 60.0) -> Response:
        """The tenant's figures for Prometheus (the key's tenant; see garrison.http.metrics)."""
        from garrison.http.metrics import CONTENT_TYPE, render_metrics

        key = presented_key(request)
        tenant = keys.tenant_for(key) or admins.tenant_for(key)
        if tenant is None:
            raise _unauthorized()
        if not 0 < window <= 86400:
            raise ValidationError("window must be between 0 and 86400 seconds", field="window")
        return Response(render_metrics(client, tenant, window), media_type=CONTENT_TYPE)

    app.include_router(build_console(client, keys))
    return app


def ingest(
    client: Garrison, tenant: str, body: EventBody | BatchBody, idempotency_key: str | None
) -> list[IngestedEvent]:
    """Store a request's events for ``tenant``: one through ``ingest``, a batch through ``ingest_many``
    (one transaction), so garrison's errors name ``name`` or ``events[2].name`` as the body does."""
    batch = isinstance(body, BatchBody)
    items: Sequence[EventBody] = body.events if isinstance(body, BatchBody) else [body]
    events: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"events[{index}]." if batch else ""
        if item.tenant is not None and item.tenant != tenant:
            raise Refused(403, "forbidden", f"{where}tenant {item.tenant!r} is not the API key's tenant",
                          where + "tenant")
        own = item.idempotency_key
        if idempotency_key is not None and batch:
            own = own or f"{idempotency_key}:{index}"
        elif idempotency_key is not None:
            if own is not None and own != idempotency_key:
                raise ValidationError(
                    "idempotency_key differs from the Idempotency-Key header; send one of them",
                    field="idempotency_key",
                )
            own = idempotency_key
        if item.target is not None:
            _check_target(client, item.target, item.name, where)
        events.append({"name": item.name, "key": item.key, "data": item.data, "tenant": tenant,
                       "idempotency_key": own, "target": item.target})
    if batch:
        return client.ingest_many(events)
    return [client.ingest(**events[0])]


def _check_target(client: Garrison, target: str, name: str, where: str) -> None:
    """With the automations configured (GARRISON_AUTOMATIONS, or given to the client), a target (and a
    machine's reducer) must exist, as in the CLI; without them the server cannot know, and the event is
    stored as sent."""
    if not client.settings.automations and not len(client.registry):
        return
    if target not in client.registry:
        raise ValidationError(
            f"{where}target: no automation named {target!r} is registered "
            f"(known: {sorted(a.name for a in client.registry)})",
            field=where + "target",
        )
    check = getattr(client.registry.get(target), "check_reducer", None)
    if callable(check):
        try:
            check(name)
        except ValidationError as exc:
            raise ValidationError(f"{where}name: {exc.message}", field=where + "name") from exc


def _out(event: IngestedEvent) -> IngestedOut:
    return IngestedOut(id=event.id, seq=event.seq, name=event.name, key=event.key, target=event.target,
                       idempotency_key=event.idempotency_key, duplicate=event.duplicate,
                       created_at=event.created_at)


def _unauthorized() -> Refused:
    return Refused(401, "unauthorized",
                   "a valid API key is required: `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                   headers={"WWW-Authenticate": "Bearer"})


def _error(status: int, error: ErrorCode, message: str, field: str | None = None,
           errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorOut(error=error, message=message, field=field, errors=errors or [])
    return JSONResponse(status_code=status, content=body.model_dump(mode="json"), headers=headers)


def _field(error: Any) -> str:
    """``("body", "batch", "events", 2, "name")`` -> ``events[2].name``; a header by its name."""
    parts = list(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        return "body"  # the location is a position in the text, not a field
    if parts and parts[0] == "header":
        return "Idempotency-Key" if len(parts) > 1 and str(parts[1]).lower() == "idempotency-key" else str(parts[-1])
    if parts and parts[0] == "body":
        parts = parts[1:]
    if parts and parts[0] in ("event", "batch"):  # the discriminator's tag, not a field
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _message(error: Any, field: str) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in ("model_attributes_type", "model_type", "dict_type", "union_tag_invalid"):
        if field == "body":
            return "must be a JSON object (and sent with Content-Type: application/json)"
        return "must be a JSON object"
    return str(error.get("msg", "is invalid"))
