"""Journeys: a workflow function per key, re-executed over memoized history (the events seed).

:mod:`.context` is what the function calls (``wait_for``, ``sleep``, ``step``...), :mod:`.journey` the
automation the engine runs: triggers, concurrency, the run's lifecycle and its steps as effects.
"""

from garrison.automations.journeys.context import JourneyContext
from garrison.automations.journeys.journey import Journey, journey

__all__ = ["Journey", "JourneyContext", "journey"]
