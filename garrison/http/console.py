"""The console: server-rendered pages for operators, mounted at ``/console`` by ``garrison serve``.

Pages: the overview of the signed-in tenant, a key (events, state versions with what each changed,
effects, failures, runs), journey runs (listed, filtered, each drawn as an SVG timeline), failures and
pulses. Actions (retry or cancel a run, retry a failure, pause or resume a pulse) are POSTs that need an
admin key's session and the session's CSRF token; with a viewer's (API key) session the console is
read-only. What the pages show comes from :mod:`garrison.ops.console`; here are only routes and templates.

Safe by construction: every query gets the session's tenant, never one from the request; templates
autoescape, so event data renders as text; a Content-Security-Policy forbids scripts and foreign styles;
no setting is rendered, so no secret reaches a page. No JavaScript is needed: filters are GET forms,
actions POST forms.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time.
import json
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from garrison.client import Garrison
from garrison.core.runs import STATUSES
from garrison.errors import GarrisonError, NotFound
from garrison.http.keys import ApiKeys
from garrison.http.sessions import COOKIE, Session, Sessions
from garrison.ops import console as pages
from garrison.ops.timeline import build_timeline

PREFIX = "/console"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def templates() -> Environment:
    env = Environment(loader=PackageLoader("garrison.http", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(json=_json, when=_when, ago=_ago, seconds=_seconds, q=lambda v: quote(str(v), safe=""))
    return env


class _SignIn(Exception):
    """The request has no valid session: send the browser to the sign-in page."""


def build_console(client: Garrison, viewers: ApiKeys) -> APIRouter:
    """The console's routes for ``client``; ``viewers`` are the API keys (read-only sessions), admin keys
    come from ``GARRISON_ADMIN_KEYS``."""
    sessions = Sessions(viewers, ApiKeys.parse(client.settings.admin_keys))
    env = templates()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def page(request: Request, name: str, session: Session | None, code: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            session=session, prefix=PREFIX, path=request.url.path, now=client.clock.now(), statuses=STATUSES,
            notice=request.query_params.get("notice"), **context,
        )
        return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)

    def session_of(request: Request) -> Session:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        found = (sessions.bearer(credentials.strip()) if scheme.lower() == "bearer" and credentials.strip()
                 else sessions.read(request.cookies.get(COOKIE)))
        if found is None:
            raise _SignIn()
        return found

    def view(fn: Callable[..., HTMLResponse]) -> Callable[..., Response]:
        """A page that needs a session: without one, the browser goes to the sign-in page."""

        def endpoint(request: Request) -> Response:
            try:
                return fn(request, session_of(request))
            except _SignIn:
                target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
                return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
            except NotFound as exc:
                return page(request, "console/error.html", session_of(request), 404, error=exc.message)

        return endpoint

    def action(fn: Callable[[Request, Session, dict[str, str]], str]) -> Callable[..., Any]:
        """A POST that changes something: an admin session, and (for a cookie session) its CSRF token."""

        async def endpoint(request: Request) -> Response:
            try:
                session = session_of(request)
            except _SignIn:
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
            cookie_session = not request.headers.get("authorization")
            if cookie_session and form.get("csrf") != session.csrf:
                return page(request, "console/error.html", session, 403,
                            error="this form is stale or was not sent by the console (CSRF check); reload and retry")
            if not session.admin:
                return page(request, "console/error.html", session, 403,
                            error="actions need an admin key (GARRISON_ADMIN_KEYS); this session is read-only")
            try:
                notice = fn(request, session, form)
            except GarrisonError as exc:
                return page(request, "console/error.html", session, 409 if not isinstance(exc, NotFound) else 404,
                            error=exc.message)
            back = form.get("next") or PREFIX
            if not back.startswith(PREFIX):
                back = PREFIX
            glue = "&" if "?" in back else "?"
            return RedirectResponse(f"{back}{glue}notice={quote(notice)}", status_code=303)

        return endpoint

    # -- sign-in ----------------------------------------------------------------------------------

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "console/login.html", None, next=_next(request.query_params.get("next")))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        cookie = sessions.sign_in(form.get("key", "").strip())
        if cookie is None:
            return page(request, "console/login.html", None, 401, next=_next(form.get("next")),
                        error="that key is not one of this server's API or admin keys")
        response = RedirectResponse(_next(form.get("next")), status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=sessions.lifetime, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path=PREFIX)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    @router.get("/find")
    def find(request: Request) -> Response:
        """The header's search box: a GET form, so it works without JavaScript."""
        key = request.query_params.get("key", "").strip()
        return RedirectResponse(f"{PREFIX}/keys/{quote(key, safe='')}" if key else PREFIX, status_code=303)

    @router.get("/static/console.css")
    def stylesheet() -> Response:
        css = resources.files("garrison.http").joinpath("static/console.css").read_text()
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    # -- pages ------------------------------------------------------------------------------------

    def overview(request: Request, session: Session) -> HTMLResponse:
        found = pages.overview(client, session.tenant)
        pulses = {p.name: p for p in client.pulses(tenant=session.tenant)}
        return page(request, "console/overview.html", session, view=found, pulses=pulses)

    def key(request: Request, session: Session) -> HTMLResponse:
        name = request.path_params["key"]
        found = pages.key_page(client, session.tenant, name)
        compare = None
        q = request.query_params
        if q.get("automation") and q.get("a", "").isdigit() and q.get("b", "").isdigit():
            compare = pages.compare_versions(client, session.tenant, name, q["automation"], int(q["a"]), int(q["b"]))
        return page(request, "console/key.html", session, key=name, view=found, compare=compare)

    def runs(request: Request, session: Session) -> HTMLResponse:
        q = request.query_params
        journey, status, custom = q.get("journey") or None, q.get("status") or None, q.get("custom") or None
        listed = client.runs(tenant=session.tenant, automation=journey, status=status, key=q.get("key") or None,
                             limit=200)
        every = client.runs(tenant=session.tenant, limit=500)
        if custom:
            listed = [r for r in listed if getattr(r, "custom_status", None) == custom]
        return page(request, "console/runs.html", session, runs=listed, filters=pages.run_filters(every),
                    chosen={"journey": journey or "", "status": status or "", "custom": custom or "",
                            "key": q.get("key", "")})

    def run(request: Request, session: Session) -> HTMLResponse:
        found = client.run(request.path_params["run_id"], tenant=session.tenant)
        return page(request, "console/run.html", session, run=found, timeline=build_timeline(client, found))

    def failures(request: Request, session: Session) -> HTMLResponse:
        status = request.query_params.get("status") or "failed"
        return page(request, "console/failures.html", session, shown=status,
                    failures=pages.list_failures(client, session.tenant, status=status))

    def pulses(request: Request, session: Session) -> HTMLResponse:
        return page(request, "console/pulses.html", session, pulses=client.pulses(tenant=session.tenant))

    router.add_api_route("", view(overview), methods=["GET"])
    router.add_api_route("/", view(overview), methods=["GET"])
    router.add_api_route("/keys/{key:path}", view(key), methods=["GET"])
    router.add_api_route("/runs", view(runs), methods=["GET"])
    router.add_api_route("/runs/{run_id:int}", view(run), methods=["GET"])
    router.add_api_route("/failures", view(failures), methods=["GET"])
    router.add_api_route("/pulses", view(pulses), methods=["GET"])

    # -- actions ----------------------------------------------------------------------------------

    def retry_run(request: Request, session: Session, form: dict[str, str]) -> str:
        event = client.retry_run(request.path_params["run_id"], tenant=session.tenant)
        return f"run/{request.path_params['run_id']} retry sent (event {event.id})"

    def cancel_run(request: Request, session: Session, form: dict[str, str]) -> str:
        reason = form.get("reason") or f"cancelled from the console by a {session.tenant} admin"
        client.cancel_run(request.path_params["run_id"], tenant=session.tenant, reason=reason)
        return f"run/{request.path_params['run_id']} cancel sent"

    def retry_failure(request: Request, session: Session, form: dict[str, str]) -> str:
        event = client.retry(request.path_params["failure_id"], tenant=session.tenant)
        return f"failure {request.path_params['failure_id']} retried as event {event.id}"

    def pause(request: Request, session: Session, form: dict[str, str]) -> str:
        client.pause_pulse(request.path_params["name"], tenant=session.tenant)
        return f"pulse {request.path_params['name']} paused"

    def resume(request: Request, session: Session, form: dict[str, str]) -> str:
        client.resume_pulse(request.path_params["name"], tenant=session.tenant)
        return f"pulse {request.path_params['name']} resumed"

    router.add_api_route("/runs/{run_id:int}/retry", action(retry_run), methods=["POST"])
    router.add_api_route("/runs/{run_id:int}/cancel", action(cancel_run), methods=["POST"])
    router.add_api_route("/failures/{failure_id:int}/retry", action(retry_failure), methods=["POST"])
    router.add_api_route("/pulses/{name}/pause", action(pause), methods=["POST"])
    router.add_api_route("/pulses/{name}/resume", action(resume), methods=["POST"])
    return router


def _next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith(PREFIX) and not value.startswith("//"):
        return value
    return PREFIX


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False, default=str)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return ""
    return _seconds((now - value).total_seconds()) + " ago"


def _seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    if seconds >= 1:
        return f"{seconds:.1f}s"
    return f"{seconds * 1000:.0f}ms"
