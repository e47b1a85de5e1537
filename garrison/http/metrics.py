"""``GET /metrics``: the console's overview figures in Prometheus' text format, per tenant and automation.

The figures are read from SQL at scrape time by :func:`garrison.ops.stats.collect_stats`, the function
behind ``garrison stats``, so the two always agree and are right even when every worker is down. A scrape
authenticates with an API key (``Authorization: Bearer <key>``, Prometheus' ``authorization`` block) and
gets that key's tenant: one scrape job per tenant, as every other read in garrison is scoped by tenant.

::

    garrison_apply_lag_seconds{tenant="acme"} 0.4
    garrison_failures{tenant="acme",automation="orders"} 2
    garrison_pulse_progress_ratio{tenant="acme",pulse="checkTimeout",slot="2025-03-01T09:00:00+00:00"} 0.4
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from garrison.core.runs import count_runs
from garrison.core.runtime import Runtime
from garrison.ops.stats import AutomationStats, Stats, collect_stats

__all__ = ["CONTENT_TYPE", "render_metrics", "stats_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def stats_metrics(stats: Stats, runs: dict[str, int] | None = None) -> list[Metric]:
    """The Prometheus families of one tenant's :class:`~garrison.ops.stats.Stats`."""
    t = stats.tenant

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ("tenant",)) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"garrison_{name}", doc, labels=list(labels))

    out: list[Metric] = []
    per_tenant = [
        ("ingest_rate", "Events ingested per second over the window.", stats.events_per_second),
        ("events_in_window", "Events ingested in the window.", stats.events),
        ("window_seconds", "The window the rates are measured over.", stats.window),
        ("apply_lag_seconds", "Age of the oldest message not applied yet (0 when none waits).",
         stats.oldest_pending_age or 0.0),
        ("pending_messages", "Messages committed past their key's cursor.", stats.pending_messages),
        ("pending_keys", "Keys with messages not applied yet.", stats.pending_keys),
    ]
    for name, doc, value in per_tenant:
        family = gauge(name, doc)
        family.add_metric([t], float(value))
        out.append(family)
    beat = gauge("beat_running", "1 while a beat holds the fleet's lease (the relay and pulses run).")
    beat.add_metric([t], 1.0 if stats.beat is not None and stats.beat.running else 0.0)
    out.append(beat)

    labels = ("tenant", "automation")
    per_automation: dict[str, tuple[str, Callable[[AutomationStats], int]]] = {
        "entities": ("Entities (one automation at one key).", lambda a: a.entities),
        "state_changes_in_window": ("State versions written in the window.", lambda a: a.changes),
        "failures": ("Failed messages waiting for a retry.", lambda a: a.failures),
        "effect_retries": ("Effects that failed at least once and will be tried again.", lambda a: a.effects_retrying),
        "timers_pending": ("Timers waiting for their time.", lambda a: a.timers_pending),
        "timers_late": ("Pending timers whose time has passed.", lambda a: a.timers_overdue),
        "timers_due_soon": ("Timers due within the window.", lambda a: a.timers_due_soon),
    }
    for name, (doc, read) in per_automation.items():
        family = gauge(name, doc, labels)
        for a in stats.automations:
            family.add_metric([t, a.automation], float(read(a)))
        out.append(family)
    effects = gauge("effects", "Effects not done, by status (pending, dispatched, failed for good).",
                    ("tenant", "automation", "status"))
    for a in stats.automations:
        for status in ("pending", "dispatched", "failed"):
            effects.add_metric([t, a.automation, status], float(getattr(a, f"effects_{status}")))
    out.append(effects)

    slot_labels = ("tenant", "pulse", "slot")
    done = gauge("pulse_done", "Entities a running pulse slot has sent.", slot_labels)
    total = gauge("pulse_total", "Entities a running pulse slot sends in all.", slot_labels)
    ratio = gauge("pulse_progress_ratio", "done / total of a running pulse slot.", slot_labels)
    for p in stats.pulses:
        key = [t, p.schedule, p.slot.isoformat()]
        done.add_metric(key, float(p.done))
        if p.total is not None:
            total.add_metric(key, float(p.total))
            ratio.add_metric(key, p.done / p.total if p.total else 1.0)
    out += [done, total, ratio]

    if runs is not None:
        family = gauge("journey_runs", "Journey runs by status.", ("tenant", "status"))
        for status, count in sorted(runs.items()):
            family.add_metric([t, status], float(count))
        out.append(family)
    return out


class _TenantCollector(Collector):
    def __init__(self, client: Runtime, tenant: str, window: float) -> None:
        self.client, self.tenant, self.window = client, tenant, window

    def collect(self) -> Iterator[Metric]:
        stats = collect_stats(self.client, tenant=self.tenant, window=self.window)
        yield from stats_metrics(stats, count_runs(self.client.db, self.tenant))


def render_metrics(client: Runtime, tenant: str, window: float = 60.0) -> bytes:
    """The text a scrape of ``tenant`` gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TenantCollector(client, tenant, window))
    return generate_latest(registry)
