"""Is the fleet moving? Whether a beat holds its lease, and the warning ``garrison stats`` and
``garrison inspect`` print when work waits longer than ``GARRISON_RELAY_AFTER`` with no beat running.

The relay that re-publishes committed work whose message was lost (a broker restart, a process killed
between commit and publish) is a beat task: without a beat such work waits forever, silently. Beat holds a
SQL lease (:mod:`garrison.pulses.beat`) that it renews every tick, so its absence is visible from SQL
alone, even when every worker is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from garrison.core.leases import holder
from garrison.core.runtime import Runtime
from garrison.pulses.beat import FLEET, LEASE

__all__ = ["BeatStatus", "beat_status", "stall_warning"]


@dataclass(frozen=True, slots=True)
class BeatStatus:
    """Whether a beat holds the fleet's lease now. ``owner`` is the last holder (``beat@host:pid:...``)
    and ``expires_at`` when its lease ends; ``running`` is False when none ever ran or its lease lapsed."""

    running: bool
    owner: str | None
    expires_at: datetime | None


def beat_status(client: Runtime) -> BeatStatus:
    """Who holds beat's lease, and whether it is still live by the client's clock."""
    lease = holder(client.db, FLEET, LEASE)
    if lease is None:
        return BeatStatus(running=False, owner=None, expires_at=None)
    return BeatStatus(running=lease.expires_at > client.clock.now(), owner=lease.owner,
                      expires_at=lease.expires_at)


def stall_warning(age: float | None, relay_after: float, beat: BeatStatus | None) -> str | None:
    """The warning for a message that has waited ``age`` seconds, or None when there is nothing to say:
    nothing waits, it has not waited past ``relay_after``, or a beat runs (then the relay handles it)."""
    if age is None or age <= relay_after or beat is None or beat.running:
        return None
    return (f"no beat is running, and the oldest pending message has waited {age:.1f}s (more than "
            f"GARRISON_RELAY_AFTER={relay_after:g}s): start one with `garrison beat`, which re-publishes work "
            "whose message was lost, and check that workers run")
