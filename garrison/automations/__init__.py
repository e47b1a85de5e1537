"""The five authoring styles. Each compiles to the core's one contract (an
:class:`~garrison.core.contract.Automation`: ``accepts``, a pure ``apply``, ``perform`` for effects), and
each keeps both of its halves in one place: the worker half the engine calls, and the caller half a web
app, a script or the CLI calls.

- :mod:`~garrison.automations.machine`: reducer machines with listeners (casern)
- :mod:`~garrison.automations.loop`: update loops with commands (go-state)
- :mod:`~garrison.automations.journeys`: journeys re-executed over memoized history (the events package)
- :mod:`~garrison.automations.statecharts`: statecharts, and actors held outside the worker (xstate)
- :mod:`~garrison.automations.nodes`: node state with views and broadcast (Happen)

A style may import the core, the pulses (a machine declares its pulses) and the foundations; never
another style, the public client (:mod:`garrison.client`) or an interface.
"""
