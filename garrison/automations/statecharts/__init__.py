"""Statecharts (persistable-xstate-actor): the definition (:mod:`.definition`), one event's macrostep
(:mod:`.macrostep`), the automation (:mod:`.chart`), and its caller half: actors held outside the worker
(:mod:`.actors`) under SQL leases (:mod:`.leases`)."""

from garrison.automations.statecharts.actors import Actor, SaveResult, SentEvent, hold_actor, load_actor
from garrison.automations.statecharts.chart import Statechart, Step

__all__ = ["Actor", "SaveResult", "SentEvent", "Statechart", "Step", "hold_actor", "load_actor"]
