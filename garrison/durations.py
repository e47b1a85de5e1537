"""Durations in the ``ms`` package's format, as the events seed takes them.

``"500ms"``, ``"1s"``, ``"2m"``, ``"1h"``, ``"7d"``, ``"1w"``, ``"1y"`` (365.25 days, as ``ms``), long forms
(``"2 days"``, ``"1.5 hours"``) and a :class:`~datetime.timedelta`. A string without a unit is milliseconds
(``ms("100")`` is 100 ms); a bare ``int`` or ``float`` is seconds, as everywhere else in Python.
"""

from __future__ import annotations

import re
from datetime import timedelta

from garrison.errors import ValidationError

Duration = str | int | float | timedelta

_UNITS: dict[str, float] = {}
for _seconds, _names in (
    (0.001, ("ms", "msec", "msecs", "millisecond", "milliseconds")),
    (1.0, ("s", "sec", "secs", "second", "seconds")),
    (60.0, ("m", "min", "mins", "minute", "minutes")),
    (3600.0, ("h", "hr", "hrs", "hour", "hours")),
    (86400.0, ("d", "day", "days")),
    (604800.0, ("w", "week", "weeks")),
    (31557600.0, ("y", "yr", "yrs", "year", "years")),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_PATTERN = re.compile(r"^\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_duration(value: Duration, *, field: str = "duration") -> timedelta:
    """A :class:`timedelta` from ``"6s"``, ``"7d"``, ``timedelta(...)`` or seconds. Refuses negatives."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValidationError(f"{field} must be a duration like '6s', not a bool", field=field)
    elif isinstance(value, int | float):
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or (unit and unit not in _UNITS):
            raise ValidationError(
                f"{field} {value!r} is not a duration: use a number and a unit like '500ms', '6s', '2m', "
                "'1h', '7d', '1w'",
                field=field,
            )
        result = timedelta(seconds=float(match.group(1)) * (_UNITS[unit] if unit else 0.001))
    else:
        raise ValidationError(f"{field} must be a duration like '6s', not {type(value).__name__}", field=field)
    if result < timedelta(0):
        raise ValidationError(f"{field} cannot be negative ({value!r})", field=field)
    return result


def format_duration(delta: timedelta) -> str:
    """The shortest ``ms``-style text for a duration: ``1s``, ``1500ms``, ``2m``, ``7d``."""
    ms = round(delta.total_seconds() * 1000)
    for unit, size in (("w", 604800000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
