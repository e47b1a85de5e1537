"""A heartbeat while long work runs: a daemon thread calls ``beat()`` every ``every`` seconds until the
block ends. An effect that runs ten minutes is never started twice while it is alive; one lost with a
killed worker stops beating and is started again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("garrison.heartbeat")

__all__ = ["beating"]


@contextmanager
def beating(beat: Callable[[], None], every: float) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            try:
                beat()
            except Exception:  # a missed beat is survivable; the next one tries again
                log.warning("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=run, name="garrison-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every)
