"""``GET /metrics``: the overview's figures for Prometheus, per tenant and automation, scraped as Prometheus
does and compared with ``garrison stats``; only a key of the tenant may scrape it."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from garrison.cli import cli
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.core.runner import Runner
from garrison.http import create_app
from garrison.models import EFFECTS
from garrison.ops.stats import collect_stats
from garrison.pulses.fanout import open_slot, save_schedule
from garrison.pulses.schedules import PulseSchedule
from tests.apps.console import shop


def scrape(app: object, key: str | None, window: str = "") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://garrison") as http:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return await http.get(f"/metrics{window}", headers=headers)

    import asyncio

    return asyncio.run(get())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_endpoint_serves_a_tenants_figures_as_garrison_stats_reads_them(
    backend: str, settings_for: Callable[..., Settings]
) -> None:
    acme_key, globex_key = secrets.token_hex(16), secrets.token_hex(16)
    settings = settings_for(backend, automations=("tests.apps.console",),
                            api_keys=(f"acme:{acme_key}", f"globex:{globex_key}"))
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30))
    client = Garrison(settings, publisher=NullPublisher(), clock=clock)
    try:
        # Applied orders (one listener will retry), a failed one, a journey waiting on a timer, two
        # messages left pending, and a pulse slot half way.
        shop.send("placed", "o-1", {"total": 1, "listener_fails": True}, tenant="acme", client=client)
        shop.send("placed", "o-2", {"total": "x", "boom": True}, tenant="acme", client=client)
        client.ingest("signup/started", "u-1", {"user": "u-1", "timeout": "10m"}, tenant="acme")
        client.run_pending("acme", effects=False)
        # Perform the effects by hand (the journey's first step, the listener that fails once), then
        # apply what they reported.
        with client.db.session() as s:
            ids = [r.id for r in s.execute(EFFECTS.select().where(EFFECTS.c.tenant == "acme")).all()]
        for effect_id in ids:
            with contextlib.suppress(ConnectionError):  # the listener: attempt 1 fails, it will be retried
                Runner(client).perform_effect("acme", effect_id, final_attempt=False)
        client.run_pending("acme", effects=False)
        clock.advance(20)
        shop.send("shipped", "o-1", {"carrier": "ups"}, tenant="acme", client=client)
        shop.send("placed", "o-3", {"total": 3}, tenant="acme", client=client)
        schedule = save_schedule(client.db, "acme", PulseSchedule("tick", "shop", "shipped", every="1h"), clock.now())
        opened = open_slot(client.db, "acme", schedule, clock.now(), clock.now())
        assert opened is not None
        clock.advance(4)

        app = create_app(client)
        assert scrape(app, None).status_code == 401
        assert scrape(app, "not-a-key").status_code == 401
        answer = scrape(app, acme_key)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        got = samples(answer.text)
        stats = collect_stats(client, tenant="acme", window=60)

        def one(name: str, **labels: str) -> float:
            return got[(f"garrison_{name}", tuple(sorted({"tenant": "acme", **labels}.items())))]

        assert one("apply_lag_seconds") == stats.oldest_pending_age == 4.0
        assert (one("pending_messages"), one("pending_keys")) == (stats.pending_messages, stats.pending_keys) == (2, 2)
        assert one("ingest_rate") == pytest.approx(stats.events_per_second)
        assert one("beat_running") == 0.0
        for a in stats.automations:
            at = {"automation": a.automation}
            assert one("entities", **at) == a.entities
            assert one("failures", **at) == a.failures
            assert one("effect_retries", **at) == a.effects_retrying
            assert (one("timers_pending", **at), one("timers_late", **at), one("timers_due_soon", **at)) == (
                a.timers_pending, a.timers_overdue, a.timers_due_soon)
            for status in ("pending", "dispatched", "failed"):
                assert one("effects", status=status, **at) == getattr(a, f"effects_{status}")
        per = {a.automation: a for a in stats.automations}
        assert (per["shop"].failures, per["shop"].effects_retrying, per["signup"].timers_pending) == (1, 1, 1)
        [pulse] = stats.pulses
        slot = {"pulse": "tick", "slot": pulse.slot.isoformat()}
        assert (one("pulse_done", **slot), one("pulse_total", **slot)) == (pulse.done, pulse.total)
        assert one("journey_runs", status="waiting") == 1

        # The same figures as `garrison stats --json` prints for the tenant.
        printed = json.loads(CliRunner(env=settings.as_env()).invoke(
            cli, ["stats", "--json", "--tenant", "acme"], catch_exceptions=False).stdout)
        assert (one("pending_messages"), one("pending_keys")) == (printed["pending_messages"], printed["pending_keys"])
        for a in printed["automations"]:
            at = {"automation": a["automation"]}
            assert (one("entities", **at), one("failures", **at), one("effect_retries", **at),
                    one("timers_pending", **at)) == (a["entities"], a["failures"], a["effects_retrying"],
                                                     a["timers_pending"])

        # Another tenant's key scrapes that tenant only.
        theirs = samples(scrape(app, globex_key).text)
        assert all(dict(labels)["tenant"] == "globex" for _, labels in theirs)
        assert theirs[("garrison_pending_messages", (("tenant", "globex"),))] == 0
        assert scrape(app, acme_key, "?window=0").status_code == 422
    finally:
        client.db.dispose()
