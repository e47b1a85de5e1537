"""Pulse schedules: when a pulse fires (issue 4's foundation; the beat scheduler and fan-out build on it).

A schedule is a cron expression evaluated with croniter in a named timezone, or an interval. This module
is pure: it turns a definition into slots (the instants a pulse is due) and applies the missed-slot
policy; it reads no clock and no database, so two beats given the same inputs compute the same slots.

Cron: five fields, or six with seconds as the sixth (croniter's order). Timezones are IANA names. DST:
a wall time that does not exist (the spring-forward gap) fires at the first instant after the gap; a
wall time that happens twice (the fall-back overlap) fires once, on its first occurrence, when the hour
field names hours; expressions whose hour field is ``*`` (``*/30 * * * *``) keep firing on real time
through the repeated hour, as cron users expect of them.

Intervals (``"every 30s"``) are anchored at the Unix epoch in UTC, so their slots do not depend on when a
beat started.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from garrison.durations import parse_duration
from garrison.errors import DefinitionError, ValidationError

MISSED = ("latest", "all", "skip")
OVERLAP = ("skip", "allow")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Due:
    """What a beat tick should do for one schedule: fire these slots, how many missed ones it skipped,
    and the next slot after ``now`` (where to look next time)."""

    fire: list[datetime]
    skipped: int
    next_slot: datetime


@dataclass(frozen=True)
class PulseSchedule:
    """A pulse: send ``message`` (with the slot's time as ``now``) to every entity of ``automation``.

    ``cron`` or ``every`` (one of them); ``timezone`` for cron; ``data`` sent with each pulse; ``where``
    an optional filter on the entity's state stored as data (``{"status": ["inquired"]}``: state's status
    is one of those); ``missed``: after downtime fire the ``"latest"`` missed slot (default), ``"all"`` of
    them (the last ``missed_limit``), or ``"skip"`` them; ``overlap``: a slot due while the previous one
    still runs is ``"skip"``-ped and recorded (default) or ``"allow"``-ed; ``grace``: how late a slot may
    be and still count as on time, not missed.
    """

    name: str
    automation: str
    message: str
    cron: str | None = None
    every: str | float | timedelta | None = None
    timezone: str = "UTC"
    data: Mapping[str, Any] = field(default_factory=dict)
    where: Mapping[str, Any] | None = None
    missed: str = "latest"
    missed_limit: int = 100
    overlap: str = "skip"
    grace: float = 5.0

    def __post_init__(self) -> None:
        where = f"pulse {self.name!r}"
        for part in ("name", "automation", "message"):
            value = getattr(self, part)
            if not isinstance(value, str) or not value.strip():
                raise DefinitionError(f"{where} needs a non-empty {part}", pulse=self.name, part=part)
        if (self.cron is None) == (self.every is None):
            raise DefinitionError(f"{where} needs exactly one of cron= or every=", pulse=self.name, part="cron")
        if self.cron is not None:
            _check_cron(self.cron, self.name)
        else:
            self.period  # noqa: B018 - validates every=
        _zone(self.timezone, self.name)
        if self.missed not in MISSED:
            raise DefinitionError(f"{where}: missed must be one of {', '.join(MISSED)}, not {self.missed!r}",
                                  pulse=self.name, part="missed")
        if self.overlap not in OVERLAP:
            raise DefinitionError(f"{where}: overlap must be one of {', '.join(OVERLAP)}, not {self.overlap!r}",
                                  pulse=self.name, part="overlap")
        if not isinstance(self.missed_limit, int) or self.missed_limit < 1:
            raise DefinitionError(f"{where}: missed_limit must be a positive integer", pulse=self.name,
                                  part="missed_limit")
        if self.where is not None and not isinstance(self.where, Mapping):
            raise DefinitionError(f"{where}: where must be a mapping of state fields to values",
                                  pulse=self.name, part="where")

    # -- slots ------------------------------------------------------------------------------------

    @property
    def period(self) -> timedelta | None:
        """The interval of an ``every`` schedule (None for cron)."""
        if self.every is None:
            return None
        text = self.every
        if isinstance(text, str) and text.strip().lower().startswith("every"):
            text = text.strip()[5:].strip()
        try:
            period = parse_duration(text, field="every")
        except ValidationError as exc:
            raise DefinitionError(f"pulse {self.name!r}: {exc.message}", pulse=self.name, part="every") from exc
        if period <= timedelta(0):
            raise DefinitionError(f"pulse {self.name!r}: every must be longer than zero", pulse=self.name,
                                  part="every")
        return period

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment`` (aware), in UTC."""
        moment = _aware(moment)
        period = self.period
        if period is not None:
            step = period.total_seconds()
            n = math.floor((moment - EPOCH).total_seconds() / step) + 1
            return EPOCH + timedelta(seconds=n * step)
        assert self.cron is not None
        zone = _zone(self.timezone, self.name)
        fixed_hours = "*" not in self.cron.split()[1]
        it = croniter(self.cron, moment.astimezone(zone))
        while True:
            candidate: datetime = it.get_next(datetime)
            if fixed_hours and _ambiguous(candidate):
                # A wall time that happens twice fires once, at its first occurrence.
                first = candidate.replace(fold=0).astimezone(UTC)
                if first > moment:
                    return first
                continue
            return candidate.astimezone(UTC)

    def latest_at(self, moment: datetime) -> datetime:
        """The newest slot at or before ``moment``."""
        moment = _aware(moment)
        period = self.period
        if period is not None:
            step = period.total_seconds()
            return EPOCH + timedelta(seconds=math.floor((moment - EPOCH).total_seconds() / step) * step)
        assert self.cron is not None
        zone = _zone(self.timezone, self.name)
        rough: datetime = croniter(self.cron, moment.astimezone(zone)).get_prev(datetime)
        # croniter's backwards step is unreliable around DST changes: walk forward with next_after,
        # which applies the DST rules, from a point safely before it.
        candidate = self.next_after(rough.astimezone(UTC) - timedelta(days=2))
        while True:
            following = self.next_after(candidate)
            if following > moment:
                return candidate
            candidate = following

    def slots_between(self, after: datetime, until: datetime, limit: int = 10_000) -> list[datetime]:
        """Slots ``s`` with ``after < s <= until``, oldest first; at most the oldest ``limit``."""
        slots: list[datetime] = []
        slot = self.next_after(after)
        until = _aware(until)
        while slot <= until and len(slots) < limit:
            slots.append(slot)
            slot = self.next_after(slot)
        return slots

    def due(self, cursor: datetime, now: datetime) -> Due:
        """Apply the missed-slot policy to the slots after ``cursor`` (the last slot handled) up to ``now``.

        The newest due slot no more than ``grace`` seconds old is on time and fires under every policy;
        older ones were missed: ``latest`` fires the newest missed slot when none is on time, ``all`` fires
        the last ``missed_limit`` missed slots, oldest first, ``skip`` fires none. ``skipped`` counts the
        missed slots not fired (counted up to 10,000).
        """
        cursor, now = _aware(cursor), _aware(now)
        next_slot = self.next_after(now)
        latest = self.latest_at(now)
        if latest <= cursor:
            return Due([], 0, next_slot)
        on_time = latest if (now - latest).total_seconds() <= self.grace else None
        if self.missed == "all":
            start = cursor
            period = self.period
            if period is not None:  # jump straight to the last missed_limit + 1 slots
                start = max(cursor, latest - period * (self.missed_limit + 1))
            recent = self.slots_between(start, latest, limit=10_000)
            missed = recent[:-1] if on_time is not None else recent
            fire = missed[-self.missed_limit:]
        elif self.missed == "latest":
            fire = [] if on_time is not None else [latest]
        else:
            fire = []
        if on_time is not None:
            fire = [*fire, on_time]
        total = self.count_between(cursor, latest)
        return Due(fire, max(total - len(fire), 0), next_slot)

    def count_between(self, after: datetime, until: datetime, cap: int = 10_000) -> int:
        """How many slots fall in ``(after, until]`` (cron: counted up to ``cap``)."""
        period = self.period
        if period is not None:
            step = period.total_seconds()
            first = math.floor((_aware(after) - EPOCH).total_seconds() / step)
            last = math.floor((_aware(until) - EPOCH).total_seconds() / step)
            return max(last - first, 0)
        return len(self.slots_between(after, until, limit=cap))


def state_matches(state: Any, where: Mapping[str, Any] | None) -> bool:
    """A pulse's ``where`` filter: every field (a dotted path into the state) equals the value given, or
    is one of the values when a list is given. No filter matches every entity."""
    if not where:
        return True
    for path, expected in where.items():
        value: Any = state
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return False
            value = value[part]
        options = expected if isinstance(expected, list | tuple) else [expected]
        if not any(type(value) is type(o) and value == o for o in options):
            return False
    return True


def _check_cron(expression: str, name: str) -> None:
    fields = expression.split() if isinstance(expression, str) else []
    if len(fields) not in (5, 6):
        raise DefinitionError(
            f"pulse {name!r}: cron expression {expression!r} needs five fields (minute hour day month weekday) "
            "or six (with seconds last)",
            pulse=name, part="cron",
        )
    try:
        croniter(expression, datetime(2024, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (ValueError, KeyError) as exc:
        raise DefinitionError(f"pulse {name!r}: cron expression {expression!r} is not valid: {exc}",
                              pulse=name, part="cron") from exc


def _zone(name: str, pulse: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise DefinitionError(f"pulse {pulse!r}: unknown timezone {name!r} (use an IANA name like "
                              "'Europe/Paris')", pulse=pulse, part="timezone") from exc


def _ambiguous(moment: datetime) -> bool:
    """Whether ``moment``'s wall-clock time happens twice (the DST fall-back hour)."""
    return moment.replace(fold=0).utcoffset() != moment.replace(fold=1).utcoffset()


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
