"""Beat schedulers. Celery's default keeps its schedule in a ``shelve`` file, which pickles; garrison
never pickles, and its periodic tasks (the relay) are idempotent, so an in-memory schedule is enough.

:class:`GarrisonScheduler` (the default) also runs the pulse beat every tick: schedules come from SQL,
so one added at run time fires without a restart, and only the beat holding the fleet's lease fires
slots (see :mod:`garrison.pulses.beat`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import Scheduler

from garrison.pulses.beat import PulseBeat
from garrison.tasks import client, settings

log = logging.getLogger("garrison.beat")

TICK = 1.0  # seconds: how often beat looks for due pulse slots


class MemoryScheduler(Scheduler):
    """Celery's base scheduler: the schedule lives in memory and is rebuilt from config at start."""


class GarrisonScheduler(MemoryScheduler):
    """The relay's schedule in memory, plus garrison's pulses from SQL on every tick."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pulses: Any = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        try:
            self.pulse_beat().tick()
        except Exception:
            log.exception("pulse tick failed")
        return min(interval, TICK)

    def pulse_beat(self) -> Any:
        if self._pulses is None:
            self._pulses = PulseBeat(client(), ttl=settings.beat_lease_ttl)
            log.info("pulse beat started", extra={"owner": self._pulses.owner})
        return self._pulses
