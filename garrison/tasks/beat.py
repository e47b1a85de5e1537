"""Beat schedulers. Celery's default keeps its schedule in a ``shelve`` file, which pickles; garrison
never pickles, and its periodic tasks (the relay) are idempotent, so an in-memory schedule is enough."""

from __future__ import annotations

from celery.beat import Scheduler


class MemoryScheduler(Scheduler):
    """Celery's base scheduler: the schedule lives in memory and is rebuilt from config at start."""
