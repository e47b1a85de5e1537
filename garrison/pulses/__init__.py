"""Pulses: a message sent on a croniter schedule to every entity of an automation.

:mod:`.schedules` (the pure schedule: next slots, missed-slot and overlap policies), :mod:`.fanout`
(opening a slot once and fanning it out in keyset pages), :mod:`.beat` (the leader that opens due slots)
and :mod:`.admin` (adding, pausing and listing schedules). Pulses sit on the core and under the styles:
a machine declares its pulses with ``@machine.pulse``.
"""
