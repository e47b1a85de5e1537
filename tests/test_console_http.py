"""The console's rules, over HTTP without a browser: sign-in and tenant scoping, actions only for an admin
session with its CSRF token (or an admin key in a header), and each action doing what it says."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.http import create_app
from tests.apps.console import shop


@dataclass
class Console:
    client: Garrison
    http: TestClient
    viewer: str
    admin: str
    other: str


@pytest.fixture
def console(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Console]:
    viewer, admin, other = (secrets.token_hex(16) for _ in range(3))
    settings = settings_for(backend, automations=("tests.apps.console",),
                            api_keys=(f"acme:{viewer}", f"globex:{other}"), admin_keys=(f"acme:{admin}",))
    client = Garrison(settings, publisher=NullPublisher())
    shop.send("placed", "o-bad", {"total": "x", "boom": True}, tenant="acme", client=client)
    client.ingest("signup/started", "u-1", {"user": "u-1", "timeout": "1h"}, tenant="acme")
    client.run_pending("acme")
    client.add_pulse("tick", "shop", "shipped", every="1h", tenant="acme")
    with TestClient(create_app(client)) as http:
        yield Console(client, http, viewer, admin, other)
    client.db.dispose()


def sign_in(c: Console, key: str) -> str:
    """Sign in with a cookie session; returns the session's CSRF token (from a page's form)."""
    c.http.cookies.clear()
    answer = c.http.post("/console/login", data={"key": key}, follow_redirects=False)
    assert answer.status_code == 303
    page = c.http.get("/console/failures").text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    return found.group(1) if found else ""


def test_pages_need_a_session_and_show_only_the_keys_tenant(console: Console) -> None:
    http = console.http
    answer = http.get("/console/keys/o-bad", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login?next=")
    assert http.get("/console", headers={"Authorization": "Bearer wrong-key-0000000"},
                    follow_redirects=False).status_code == 303
    mine = http.get("/console/keys/o-bad", headers={"Authorization": f"Bearer {console.viewer}"})
    assert mine.status_code == 200 and "total must be a number" in mine.text
    assert "script-src" not in mine.headers["content-security-policy"]  # default-src 'none': no script at all
    theirs = http.get("/console/keys/o-bad", headers={"Authorization": f"Bearer {console.other}"})
    assert "Nothing is stored for this key in tenant globex" in theirs.text
    [failure] = console.client.failures(tenant="acme")
    refused = http.post(f"/console/failures/{failure}/retry", headers={"Authorization": f"Bearer {console.other}"})
    assert refused.status_code == 403  # globex's key is no admin key, and the failure is not globex's anyway


def test_a_viewer_sees_no_action_and_cannot_post_one(console: Console) -> None:
    csrf = sign_in(console, console.viewer)
    assert csrf == ""  # no form to post
    [failure] = console.client.failures(tenant="acme")
    answer = console.http.post(f"/console/failures/{failure}/retry", data={"csrf": "x"})
    assert answer.status_code == 403 and "CSRF" in answer.text
    assert console.client.failures(tenant="acme") == [failure]


def test_an_admin_session_acts_with_its_csrf_token_and_not_without(console: Console) -> None:
    csrf = sign_in(console, console.admin)
    assert csrf
    [failure] = console.client.failures(tenant="acme")
    assert console.http.post(f"/console/failures/{failure}/retry", data={"next": "/console"}).status_code == 403
    done = console.http.post(f"/console/failures/{failure}/retry", data={"csrf": csrf, "next": "https://evil.example/"},
                             follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/console?notice=")  # never off-site
    assert console.client.failures(tenant="acme") == []

    [run] = console.client.runs(tenant="acme")
    cancelled = console.http.post(f"/console/runs/{run.id}/cancel", data={"csrf": csrf})
    assert cancelled.status_code == 200 and "cancel sent" in cancelled.text
    console.client.run_pending("acme")
    assert console.client.run(run.id, tenant="acme").status == "cancelled"

    console.http.post("/console/pulses/tick/pause", data={"csrf": csrf})
    assert console.client.pulse("tick", tenant="acme").paused
    console.http.post("/console/pulses/tick/resume", data={"csrf": csrf})
    assert not console.client.pulse("tick", tenant="acme").paused


def test_an_admin_key_in_a_header_acts_without_a_form_token(console: Console) -> None:
    console.http.cookies.clear()
    answer = console.http.post("/console/pulses/tick/pause", headers={"Authorization": f"Bearer {console.admin}"},
                               follow_redirects=False)
    assert answer.status_code == 303 and console.client.pulse("tick", tenant="acme").paused
    missing = console.http.post("/console/runs/999999/retry", headers={"Authorization": f"Bearer {console.admin}"})
    assert missing.status_code == 404
