"""The console in a real browser (Debian's Chromium driven by Playwright, nothing downloaded) against
``garrison serve`` and a real worker, on both backends: every page loads with the worker's data, event data
is shown as text, a tenant sees only its own rows, actions need an admin key and the session's CSRF token,
and clicking "Retry run" on a failed journey run makes it resume and complete.

Screenshots land in ``test-artifacts/console/<backend>/`` (the test prints the folder)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from garrison.client import Garrison
from garrison.config import Settings
from garrison.pulses.fanout import open_slot, save_schedule
from garrison.pulses.schedules import PulseSchedule
from tests.apps.console import shop
from tests.harness import ROOT, WorkerProcess, start_server, wait_until

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "console"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}; `make services` installs Chromium", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A Chromium page with a new, empty profile; closed at teardown."""
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    profile = tempfile.mkdtemp(prefix="garrison-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_the_console_shows_a_workers_data_escapes_it_scopes_it_by_tenant_and_retries_a_failed_run(
    backend: str, settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess], tmp_path: Path,
    browser: Any,
) -> None:
    viewer, admin, other = (secrets.token_hex(16) for _ in range(3))
    settings = settings_for(backend, automations=("tests.apps.console",), effect_max_retries=1,
                            api_keys=(f"acme:{viewer}", f"globex:{other}"), admin_keys=(f"acme:{admin}",))
    shots = ARTIFACTS / backend
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    print(f"console screenshots: {shots}")
    worker(settings)
    server, base = start_server(settings, tmp_path / "serve.log")
    client = Garrison(settings)
    blocker = tmp_path / "mail-provider-down"
    blocker.touch()
    try:
        _the_workers_data(client, blocker)
        page = browser

        # Signed out: any page leads to the sign-in form, which refuses a wrong key.
        page.goto(f"{base}/console/runs")
        assert page.url.startswith(f"{base}/console/login")
        _sign_in(page, "not-a-key-of-ours")
        assert "not one of this server's" in page.inner_text(".error")
        _sign_in(page, viewer)
        assert page.url == f"{base}/console/runs"

        # The overview: the tenant's figures, the failure, the pulse's progress bar.
        page.goto(f"{base}/console")
        assert page.inner_text("#failures") == "1"
        assert page.inner_text("#pending-keys") == "0"
        assert page.locator(".pulse-progress progress").count() == 1
        assert "ValueError: total must be a number" in page.inner_text("body")
        assert page.locator(".role").inner_text() == "read-only"
        page.screenshot(path=str(shots / "overview.png"), full_page=True)

        # A key: its events (a <script> in the data is text, never run), versions and what changed.
        page.goto(f"{base}/console/keys/o-1")
        assert "<script>window.pwned = 1</script>" in page.inner_text(".events")
        assert page.evaluate("window.pwned") is None
        assert "status" in page.inner_text(".versions") and "shipped" in page.inner_text(".versions")
        page.click("form.compare button")
        assert "version 1 → 2" in page.inner_text("#compare h2")
        assert "carrier" in page.inner_text("#compare")
        page.screenshot(path=str(shots / "key.png"), full_page=True)

        # Runs, filtered; the failed run drawn as a timeline; no action for a read-only session.
        page.goto(f"{base}/console/runs")
        page.select_option("select[name=status]", "failed")
        page.click("form.filters button")
        assert "status=failed" in page.url
        run = client.runs(tenant="acme", automation="signup")[0]
        page.click(f"text=run/{run.id}")
        assert page.locator("svg.timeline .call").count() >= 5
        assert page.locator("svg.timeline .o-failed").count() == 1
        assert "mail provider down" in page.inner_text("body")
        assert page.locator("button:text-is('Retry run')").count() == 0
        page.screenshot(path=str(shots / "run-failed.png"), full_page=True)

        # A forged POST (no CSRF token) is refused, and so is a viewer's.
        forged = page.request.post(f"{base}/console/runs/{run.id}/retry", form={"next": "/console"})
        assert forged.status == 403 and "CSRF" in forged.text()

        # An admin signs in, fixes the provider and clicks retry: the run resumes and completes.
        page.click("button:text-is('Sign out')")
        _sign_in(page, admin)
        page.goto(f"{base}/console/runs/{run.id}")
        assert page.locator(".role").inner_text() == "admin"
        blocker.unlink()
        page.click("button:text-is('Retry run')")
        assert "retry sent" in page.inner_text(".notice")

        def completed() -> bool:
            page.goto(f"{base}/console/runs/{run.id}")
            return "completed" in page.inner_text("h1")

        wait_until(completed, timeout=60, what="the retried run to complete")
        assert "welcome sent to u-1" in page.inner_text(".calls")
        assert page.locator("svg.timeline .earlier").count() == 1  # the failed try, before the retry
        assert "after 1 failed try and a retry" in page.inner_text(".calls")
        page.screenshot(path=str(shots / "run-completed.png"), full_page=True)

        # Retry a failure and pause a pulse from their pages.
        page.goto(f"{base}/console/failures")
        page.click("button:text-is('Retry')")
        assert "retried as event" in page.inner_text(".notice")
        page.goto(f"{base}/console/pulses")
        page.click("button:text-is('Pause')")
        assert "paused" in page.inner_text(".notice") and client.pulse("tick", tenant="acme").paused
        page.screenshot(path=str(shots / "pulses.png"), full_page=True)

        # Another tenant's key sees none of acme's rows.
        page.click("button:text-is('Sign out')")
        _sign_in(page, other)
        page.goto(f"{base}/console/keys/o-1")
        assert "Nothing is stored for this key in tenant globex" in page.inner_text("body")
        assert page.goto(f"{base}/console/runs/{run.id}").status == 404

        # No key or secret of the server appears in any page.
        for path in ("/console", "/console/keys/o-1", "/console/runs", "/console/failures", "/console/pulses"):
            html = httpx.get(base + path, headers={"Authorization": f"Bearer {admin}"}).text
            assert all(secret not in html for secret in (viewer, admin, other)), path
    finally:
        client.db.dispose()
        server.stop()


def _sign_in(page: Any, key: str) -> None:
    if "/console/login" not in page.url:
        page.goto(page.url.split("/console")[0] + "/console/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def _the_workers_data(client: Garrison, blocker: Path) -> None:
    """An order with two versions (its note carries markup), an order whose reducer fails, a signup whose
    welcome step fails while the provider is down, and a pulse slot fanning out."""
    shop.send("placed", "o-1", {"total": 42, "note": "<script>window.pwned = 1</script>"}, tenant="acme",
              client=client)
    shop.send("shipped", "o-1", {"carrier": "ups"}, tenant="acme", client=client)
    shop.send("placed", "o-2", {"total": "lots", "boom": True}, tenant="acme", client=client)
    client.ingest("signup/started", "u-1", {"user": "u-1", "timeout": "300ms", "nap": "200ms",
                                              "blocker": str(blocker)}, tenant="acme")

    def settled() -> bool:
        runs = client.runs(tenant="acme", automation="signup")
        return bool(runs) and runs[0].status == "failed" and client.state("shop", "o-1", tenant="acme") is not None \
            and (client.state("shop", "o-1", tenant="acme") or {}).get("status") == "shipped"

    wait_until(settled, timeout=90, what="the worker to apply the orders and fail the signup's welcome step")
    schedule = save_schedule(client.db, "acme", PulseSchedule("tick", "shop", "shipped", every="1h"),
                             client.clock.now())
    open_slot(client.db, "acme", schedule, client.clock.now() - timedelta(seconds=5), client.clock.now())
