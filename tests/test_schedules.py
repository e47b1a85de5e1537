"""Pulse schedules (issue 4's foundation): croniter edge cases, intervals, missed-slot policies, filters.
Pure functions: no database, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from garrison.errors import DefinitionError
from garrison.pulses.schedules import PulseSchedule, state_matches

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def cron(expression: str, timezone: str = "UTC", **kwargs: object) -> PulseSchedule:
    return PulseSchedule("p", "inquiry", "checkTimeout", cron=expression, timezone=timezone, **kwargs)  # type: ignore[arg-type]


def following(schedule: PulseSchedule, start: datetime, n: int) -> list[datetime]:
    out, moment = [], start
    for _ in range(n):
        moment = schedule.next_after(moment)
        out.append(moment)
    return out


def local(moments: list[datetime], zone: ZoneInfo) -> list[str]:
    return [m.astimezone(zone).isoformat() for m in moments]


def test_month_ends_and_leap_days() -> None:
    start = datetime(2025, 1, 15, tzinfo=UTC)
    assert [d.date().isoformat() for d in following(cron("0 0 L * *"), start, 4)] == [
        "2025-01-31", "2025-02-28", "2025-03-31", "2025-04-30"]
    # The 31st skips the months that have none.
    assert [d.date().isoformat() for d in following(cron("0 12 31 * *"), start, 3)] == [
        "2025-01-31", "2025-03-31", "2025-05-31"]
    # February 29th waits for the next leap year; a leap year's own is taken.
    leap = [datetime(2028, 2, 29, tzinfo=UTC), datetime(2032, 2, 29, tzinfo=UTC)]
    assert following(cron("0 0 29 2 *"), start, 2) == leap
    assert following(cron("0 0 29 2 *"), datetime(2024, 2, 1, tzinfo=UTC), 1) == [datetime(2024, 2, 29, tzinfo=UTC)]


def test_a_wall_time_in_the_spring_forward_gap_fires_once_right_after_it() -> None:
    daily = cron("30 2 * * *", "Europe/Paris")
    assert local(following(daily, datetime(2025, 3, 29, 12, tzinfo=PARIS), 3), PARIS) == [
        "2025-03-30T03:00:00+02:00",  # 02:30 does not exist that night
        "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00",
    ]


def test_a_wall_time_in_the_fall_back_overlap_fires_once_but_intervals_follow_real_time() -> None:
    daily = cron("30 1 * * *", "America/New_York")
    assert local(following(daily, datetime(2025, 11, 1, 12, tzinfo=NEW_YORK), 3), NEW_YORK) == [
        "2025-11-02T01:30:00-04:00",  # 01:30 happens twice that night: once is enough
        "2025-11-03T01:30:00-05:00",
        "2025-11-04T01:30:00-05:00",
    ]
    half_hourly = cron("*/30 * * * *", "Europe/Paris")
    assert local(following(half_hourly, datetime(2025, 10, 26, 1, 50, tzinfo=PARIS), 5), PARIS) == [
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-26T02:00:00+01:00",  # the repeated hour, thirty real minutes later
        "2025-10-26T02:30:00+01:00",
        "2025-10-26T03:00:00+01:00",
    ]
    # latest_at agrees with next_after across the overlap.
    assert daily.latest_at(datetime(2025, 11, 2, 7, 0, tzinfo=UTC)) == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)


def test_a_named_timezone_shifts_the_slots_in_utc_with_the_seasons() -> None:
    nine = cron("0 9 * * 1-5", "Europe/Paris")
    winter = nine.next_after(datetime(2025, 1, 6, 0, tzinfo=UTC))
    summer = nine.next_after(datetime(2025, 7, 7, 0, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (8, 7)  # 09:00 Paris is 08:00 UTC in winter, 07:00 in summer


def test_a_sixth_field_is_seconds_and_intervals_are_anchored_at_the_epoch() -> None:
    assert following(cron("* * * * * */15"), datetime(2025, 1, 1, tzinfo=UTC), 3) == [
        datetime(2025, 1, 1, 0, 0, s, tzinfo=UTC) for s in (15, 30, 45)]
    every = PulseSchedule("p", "a", "tick", every="every 30s")
    assert every.period == timedelta(seconds=30)
    assert every.next_after(datetime(2025, 1, 1, 0, 0, 7, tzinfo=UTC)) == datetime(2025, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert every.next_after(datetime(2025, 1, 1, 0, 0, 30, tzinfo=UTC)) == datetime(2025, 1, 1, 0, 1, tzinfo=UTC)
    assert PulseSchedule("p", "a", "tick", every="5m").period == timedelta(minutes=5)


def test_bad_definitions_are_refused_naming_the_part() -> None:
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"cron": "61 * * * *"}, "cron", "is not valid"),
        ({"cron": "* * *"}, "cron", "needs five fields"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone", "unknown timezone 'Mars/Olympus'"),
        ({}, "cron", "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": "1s"}, "cron", "exactly one"),
        ({"every": "soon"}, "every", "is not a duration"),
        ({"every": "0s"}, "every", "longer than zero"),
        ({"cron": "* * * * *", "missed": "some"}, "missed", "latest, all, skip"),
        ({"cron": "* * * * *", "overlap": "queue"}, "overlap", "skip, allow"),
    ]
    for kwargs, part, text in cases:
        with pytest.raises(DefinitionError, match=text) as caught:
            PulseSchedule("p", "a", "m", **kwargs)  # type: ignore[arg-type]
        assert caught.value.part == part, kwargs
    with pytest.raises(DefinitionError, match="non-empty message"):
        PulseSchedule("p", "a", "", cron="* * * * *")


def test_missed_slots_after_downtime_follow_the_schedules_policy() -> None:
    cursor = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    now = datetime(2025, 1, 1, 12, 10, 30, tzinfo=UTC)  # ten minutely slots were due while down
    latest = cron("* * * * *").due(cursor, now)
    assert latest.fire == [datetime(2025, 1, 1, 12, 10, tzinfo=UTC)] and latest.skipped == 9
    assert latest.next_slot == datetime(2025, 1, 1, 12, 11, tzinfo=UTC)
    every = cron("* * * * *", missed="all", missed_limit=3).due(cursor, now)
    assert every.fire == [datetime(2025, 1, 1, 12, m, tzinfo=UTC) for m in (8, 9, 10)] and every.skipped == 7
    skip = cron("* * * * *", missed="skip").due(cursor, now)
    assert skip.fire == [] and skip.skipped == 10
    # A slot a few seconds late is on time, not missed: every policy fires it.
    on_time = datetime(2025, 1, 1, 12, 1, 2, tzinfo=UTC)
    for policy in ("latest", "all", "skip"):
        assert cron("* * * * *", missed=policy).due(cursor, on_time).fire == [datetime(2025, 1, 1, 12, 1, tzinfo=UTC)]
    # Nothing due: nothing fires, and the cursor's slot itself is never fired again.
    assert cron("* * * * *").due(cursor, cursor + timedelta(seconds=59)).fire == []
    assert cron("* * * * *").due(cursor, cursor).fire == []


def test_missed_all_with_an_interval_does_not_walk_every_slot_of_a_long_downtime() -> None:
    schedule = PulseSchedule("p", "a", "tick", every="1s", missed="all", missed_limit=5)
    cursor = datetime(2025, 1, 1, tzinfo=UTC)
    due = schedule.due(cursor, cursor + timedelta(days=30, seconds=0.5))
    # The slot just due is on time; of the 2,591,999 missed before it, the last five fire.
    assert len(due.fire) == 6 and due.skipped == 30 * 86400 - 6
    assert due.fire[-1] == cursor + timedelta(days=30)


def test_a_where_filter_matches_state_fields_strictly() -> None:
    where = {"status": ["inquired", "reopened"], "owner.team": "support"}
    assert state_matches({"status": "inquired", "owner": {"team": "support"}}, where)
    assert not state_matches({"status": "responded", "owner": {"team": "support"}}, where)
    assert not state_matches({"status": "inquired"}, where)
    assert not state_matches({"status": 1}, {"status": True})
    assert state_matches(None, None) and state_matches({"a": 1}, {})
