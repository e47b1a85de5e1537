"""The core: one per-entity engine that every style compiles to.

The path of an event: :mod:`.ingest` writes it to the log with a per-key sequence and the
:mod:`.runtime` publishes the key (:mod:`.publisher`); a worker's :mod:`.runner` runs the :mod:`.engine`,
which locks the key's cursor, routes each message to the automations that take it (:mod:`.registry`,
the :mod:`.contract` every style implements) and commits state, versions, effects, timers and cursor in
one transaction; the runner then dispatches the effects and :mod:`.timers`. The :mod:`.relay` finds what
was committed but never dispatched. :mod:`.replay` rebuilds entities from the log; :mod:`.runs` reads the
journey runs the engine writes; :mod:`.leases` are owner-fenced SQL leases.

The core imports only the models, the settings and the foundations (errors, clock, durations, logs). It
never imports Celery: the one exception, named in the layer contract, is the runtime's default publisher.
"""
