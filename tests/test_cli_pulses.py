"""Operating pulse schedules from the CLI and the Python API, against the real database (both backends):
add (cron in a timezone, or an interval), list with the next slot and the last slot's progress, show the
recent slots, pause, resume, remove, replace by name; bad definitions refused naming the option and
storing nothing; every call scoped to its tenant. Slots are opened and fanned out directly with
``open_slot`` / ``fan_out_chunk`` (beat is tested elsewhere)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.cli import cli
from garrison.errors import DefinitionError, NotFound, UnknownAutomation, ValidationError
from garrison.models.pulses import PULSE_SLOTS, SCHEDULES
from garrison.pulses.admin import SlotInfo
from garrison.pulses.fanout import fan_out_chunk, open_slot, save_schedule
from garrison.pulses.schedules import PulseSchedule

T0 = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday


def run(settings: Settings, *args: str) -> Result:
    return CliRunner(env=settings.as_env()).invoke(cli, list(args), catch_exceptions=False)


def shown(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def frozen(settings: Settings, start: datetime = T0) -> Garrison:
    return Garrison(settings, publisher=NullPublisher(), clock=FrozenClock(start))


def schedule_id(client: Garrison, name: str, tenant: str | None = None) -> int:
    with client.db.session() as s:
        return int(s.execute(select(SCHEDULES.c.id).where(
            SCHEDULES.c.tenant == client.tenant_of(tenant), SCHEDULES.c.name == name)).scalar_one())


def stored(client: Garrison) -> int:
    with client.db.session() as s:
        return int(s.execute(select(func.count()).select_from(SCHEDULES)).scalar_one())


# -- the CLI ------------------------------------------------------------------------------------------


def test_a_cron_pulse_in_a_timezone_is_added_and_listed_with_its_next_slot(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend)
    assert "no pulses" in run(settings, "pulses").output
    before = datetime.now(UTC)
    added = run(settings, "pulses", "add", "tick", "--automation", "counter", "--message", "add",
                "--cron", "0 9 * * 1-5", "--timezone", "Europe/Paris", "--where", '{"count": [1]}',
                "--data", '{"reason": "morning"}')
    after = datetime.now(UTC)
    assert added.exit_code == 0, added.output
    spec = PulseSchedule("tick", "counter", "add", cron="0 9 * * 1-5", timezone="Europe/Paris")
    expected = spec.next_after(before)
    assert expected == spec.next_after(after)  # not a 09:00 Paris boundary during the call
    assert expected.hour in (7, 8) and expected.weekday() < 5  # 09:00 in Paris, in UTC
    assert f"counter.add 0 9 * * 1-5 (Europe/Paris); next slot {shown(expected)} UTC" in added.output

    listed = run(settings, "pulses")
    assert listed.exit_code == 0
    header, row = listed.output.splitlines()
    assert header.split() == ["NAME", "AUTOMATION", "MESSAGE", "WHEN", "STATE", "NEXT", "LAST", "SLOT"]
    assert row.startswith("tick  counter     add      0 9 * * 1-5 (Europe/Paris)  active")
    assert f"{shown(expected)}  never fired" in row

    [data] = json.loads(run(settings, "pulses", "--json").output)
    assert data["next_slot"] == expected.isoformat() and data["timezone"] == "Europe/Paris"
    assert data["where"] == {"count": [1]} and data["data"] == {"reason": "morning"}
    assert (data["source"], data["paused"], data["missed"], data["overlap"]) == ("sql", False, "latest", "skip")

    page = run(settings, "pulses", "show", "tick").output
    assert "counter.add  0 9 * * 1-5 (Europe/Paris)  active  (sql)" in page
    assert f"next slot {shown(expected)} UTC" in page and 'where {"count": [1]}' in page
    assert "no slot fired yet" in page


def test_an_interval_pulse_is_added_paused_resumed_and_removed(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    settings = settings_for(backend)
    before = datetime.now(UTC)
    added = run(settings, "pulses", "add", "fast", "--automation", "counter", "--message", "add", "--every", "30s",
                "--missed", "all", "--missed-limit", "5", "--overlap", "allow", "--json")
    assert added.exit_code == 0, added.output
    info = json.loads(added.output)
    assert info["every_seconds"] == 30 and info["cron"] is None and info["missed_limit"] == 5
    next_slot = datetime.fromisoformat(info["next_slot"])
    assert before < next_slot <= datetime.now(UTC) + timedelta(seconds=30)
    assert next_slot.timestamp() % 30 == 0  # intervals are anchored at the epoch
    assert "fast  counter     add      every 30s  active" in run(settings, "pulses").output

    assert run(settings, "pulses", "pause", "fast").output == "pulse 'fast' paused\n"
    assert "every 30s  paused" in run(settings, "pulses").output
    assert json.loads(run(settings, "pulses", "show", "fast", "--json").output)["paused"] is True

    resumed = run(settings, "pulses", "resume", "fast", "--json")
    assert resumed.exit_code == 0 and json.loads(resumed.output)["paused"] is False
    assert "every 30s  active" in run(settings, "pulses").output

    assert run(settings, "pulses", "remove", "fast").output == "pulse 'fast' removed\n"
    assert "no pulses" in run(settings, "pulses").output
    for command in ("show", "pause", "resume", "remove"):
        gone = run(settings, "pulses", command, "fast")
        assert gone.exit_code == 1, (command, gone.output)
        assert gone.output.startswith("error: no pulse named 'fast'") and gone.output.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--cron", "61 * * * *"], "cron expression '61 * * * *' is not valid"),
        (["--cron", "* * *"], "needs five fields"),
        (["--cron", "0 9 * * *", "--timezone", "Mars/Base"], "unknown timezone 'Mars/Base'"),
        (["--every", "soon"], "(option: --every)"),
        (["--every", "0s"], "longer than zero"),
        ([], "exactly one of cron= or every="),
        (["--cron", "0 9 * * *", "--every", "5s"], "exactly one of cron= or every="),
        (["--every", "5s", "--missed", "all", "--missed-limit", "0"], "(option: --missed-limit)"),
        (["--every", "5s", "--where", "[1]"], "--where must be a JSON object"),
        (["--every", "5s", "--data", "{"], "--data is not JSON"),
        (["--every", "5s", "--message", "nope"], "has no reducer 'nope'"),
        (["--every", "5s", "--automation", "nope"], "no automation named 'nope' is registered"),
    ],
)
def test_a_bad_pulse_is_refused_naming_the_problem_and_nothing_is_stored(
    settings_for: Callable[..., Settings], args: list[str], text: str
) -> None:
    settings = settings_for("sqlite")
    base = {"--automation": "counter", "--message": "add"}
    for option in ("--automation", "--message"):
        if option in args:
            i = args.index(option)
            base[option] = args[i + 1]
            args = args[:i] + args[i + 2:]
    flat = [x for pair in base.items() for x in pair]
    result = run(settings, "pulses", "add", "p", *flat, *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert text in result.output
    options = {"timezone": "--timezone", "reducer": "--message", "no automation": "--automation",
               "cron expression": "--cron", "exactly one": "--cron"}
    for clue, option in options.items():
        if clue in text:
            assert f"(option: {option})" in result.output
    assert "no pulses" in run(settings, "pulses").output
    client = Garrison(settings, publisher=NullPublisher())
    assert stored(client) == 0


def test_show_and_list_report_each_slots_progress(settings_for: Callable[..., Settings], backend: str) -> None:
    settings = settings_for(backend)
    client = frozen(settings)
    client.ingest_many({"name": "add", "key": f"k{n:02}", "target": "counter"} for n in range(30))
    client.run_pending(effects=False)  # the 30 entities exist from T0
    client.add_pulse("p", "counter", "same", every="1m")
    pid, tenant = schedule_id(client, "p"), settings.tenant
    now = T0 + timedelta(minutes=1)
    first = open_slot(client.db, tenant, pid, now, now)
    assert first is not None
    while fan_out_chunk(client.db, tenant, first.id, now, 20) is not None:
        pass
    second = open_slot(client.db, tenant, pid, now + timedelta(minutes=1), now)
    assert second is not None and second.status == "running"
    assert fan_out_chunk(client.db, tenant, second.id, now, 20) is not None  # 20 of 30 sent
    third = open_slot(client.db, tenant, pid, now + timedelta(minutes=2), now)
    assert third is not None and third.status == "skipped"

    slots = client.pulse("p").slots
    assert [(s.slot, s.status, s.done, s.total) for s in slots] == [
        (T0 + timedelta(minutes=3), "skipped", 0, None),
        (T0 + timedelta(minutes=2), "running", 20, 30),
        (T0 + timedelta(minutes=1), "done", 30, 30),
    ]
    assert slots[2].finished_at is not None and slots[1].finished_at is None
    reason = "overlap: the slot of 2024-01-01T00:02:00+00:00 was still running"
    assert [s.progress for s in slots] == [f"skipped ({reason})", "running 20/30", "done 30/30"]

    page = run(settings, "pulses", "show", "p").output.splitlines()
    assert page[2].split() == ["SLOT", "STATUS", "STARTED", "FINISHED"]
    assert page[3].startswith(f"2024-01-01 00:03:00  skipped ({reason})")
    assert page[4].startswith("2024-01-01 00:02:00  running 20/30") and page[4].endswith("-")
    assert page[5].startswith("2024-01-01 00:01:00  done 30/30")
    assert "skipped (overlap" in run(settings, "pulses").output  # the newest slot, in the list
    data = json.loads(run(settings, "pulses", "show", "p", "--json").output)
    assert [(s["status"], s["done"], s["total"]) for s in data["slots"]] == [
        ("skipped", 0, None), ("running", 20, 30), ("done", 30, 30)]

    for n in range(12):  # only the last 10 slots are kept in view
        opened = open_slot(client.db, tenant, pid, now + timedelta(minutes=10 + n), now)
        assert opened is not None
    assert len(client.pulse("p").slots) == 10


def test_progress_reads_in_thousands() -> None:
    def slot(status: str, done: int, total: int | None, reason: str | None = None) -> SlotInfo:
        return SlotInfo(1, T0, status, done, total, reason, T0, None)

    assert slot("running", 4000, 10_000).progress == "running 4,000/10,000"
    assert slot("done", 10_000, 10_000).progress == "done 10,000/10,000"
    assert slot("skipped", 0, None, "overlap: x").progress == "skipped (overlap: x)"


def test_tenants_are_apart(settings_for: Callable[..., Settings], backend: str) -> None:
    settings = settings_for(backend)
    for tenant, message in (("acme", "add"), ("globex", "same")):
        result = run(settings, "pulses", "add", "p", "--automation", "counter", "--message", message,
                     "--every", "1m", "--tenant", tenant)
        assert result.exit_code == 0, result.output
    assert "no pulses" in run(settings, "pulses").output  # the default tenant has none
    assert "tenant 'acme'  counter.add  every 1m" in run(settings, "pulses", "--tenant", "acme", "show", "p").output
    assert "counter     add " in run(settings, "pulses", "--tenant", "acme").output
    assert "counter     same" in run(settings, "pulses", "--tenant", "globex").output

    assert run(settings, "pulses", "pause", "p", "--tenant", "acme").exit_code == 0
    assert "paused" in run(settings, "pulses", "--tenant", "acme").output
    assert "active" in run(settings, "pulses", "--tenant", "globex").output
    assert run(settings, "pulses", "show", "p", "--tenant", "initech").exit_code == 1
    assert run(settings, "pulses", "remove", "p").exit_code == 1

    client = Garrison(settings, publisher=NullPublisher())
    now = datetime.now(UTC)
    opened = open_slot(client.db, "acme", schedule_id(client, "p", "acme"), now, now)
    assert opened is not None
    assert len(client.pulse("p", tenant="acme").slots) == 1
    assert client.pulse("p", tenant="globex").slots == []
    with pytest.raises(NotFound):
        client.pulse("p", tenant="initech")
    with pytest.raises(NotFound):
        client.resume_pulse("p")
    client.remove_pulse("p", tenant="acme")
    assert client.pulses(tenant="acme") == []
    assert [p.name for p in client.pulses(tenant="globex")] == ["p"]
    with pytest.raises(ValidationError):
        client.pulses(tenant="")


# -- the Python API -----------------------------------------------------------------------------------


def test_the_python_api_refuses_bad_definitions(settings_for: Callable[..., Settings], backend: str) -> None:
    client = frozen(settings_for(backend))
    with pytest.raises(DefinitionError) as bad_cron:
        client.add_pulse("p", "counter", "add", cron="* * *")
    assert bad_cron.value.context["part"] == "cron"
    with pytest.raises(DefinitionError) as bad_zone:
        client.add_pulse("p", "counter", "add", cron="0 9 * * *", timezone="Europe/Atlantis")
    assert bad_zone.value.context["part"] == "timezone"
    with pytest.raises(DefinitionError) as bad_policy:
        client.add_pulse("p", "counter", "add", every="1s", overlap="queue")
    assert bad_policy.value.context["part"] == "overlap"
    with pytest.raises(UnknownAutomation):
        client.add_pulse("p", "nope", "add", every="1s")
    with pytest.raises(ValidationError):
        client.add_pulse("p", "counter", "nope", every="1s")
    assert client.pulses() == [] and stored(client) == 0


def test_the_python_api_adds_pauses_resumes_replaces_and_removes(
    settings_for: Callable[..., Settings], backend: str
) -> None:
    client = frozen(settings_for(backend))
    clock = client.clock
    assert isinstance(clock, FrozenClock)
    info = client.add_pulse("p", "counter", "add", every=timedelta(minutes=1), data={"n": 1})
    assert (info.when, info.paused, info.source) == ("every 1m", False, "sql")
    assert info.next_slot == T0 + timedelta(minutes=1)
    assert (info.automation, info.message, info.data, info.where, info.slots) == ("counter", "add", {"n": 1}, None, [])
    tick = client.add_pulse("tick", "counter", "add", cron="30 9 * * *", timezone="America/New_York")
    assert tick.when == "30 9 * * * (America/New_York)"
    assert tick.next_slot == datetime(2024, 1, 1, 14, 30, tzinfo=UTC)  # 09:30 EST
    assert [p.name for p in client.pulses()] == ["p", "tick"]

    assert client.pause_pulse("p").paused
    clock.advance(86_400 * 3 + 10)  # a long pause: three days of slots
    assert client.pulse("p").next_slot == T0 + timedelta(minutes=1)
    resumed = client.resume_pulse("p")
    # The slots of the pause are not fired late: the next slot is the first one after now.
    assert not resumed.paused and resumed.next_slot == T0 + timedelta(days=3, minutes=1)
    assert client.resume_pulse("p").next_slot == resumed.next_slot  # resuming an active pulse changes nothing

    # Replaced by name: same timing keeps the next slot and the paused flag; a new timing starts afresh.
    client.pause_pulse("p")
    same = client.add_pulse("p", "counter", "same", every="60s", data={"n": 2})
    assert (same.message, same.data, same.paused, same.next_slot) == ("same", {"n": 2}, True, resumed.next_slot)
    hourly = client.add_pulse("p", "counter", "same", cron="0 * * * *")
    assert hourly.paused and hourly.cron == "0 * * * *" and hourly.every_seconds is None
    assert hourly.next_slot == T0 + timedelta(days=3, hours=1)
    assert [p.name for p in client.pulses()] == ["p", "tick"]

    # A pulse defined in code and replaced at run time becomes a run-time one (code no longer overwrites it).
    spec = PulseSchedule("coded", "counter", "add", every="1h")
    save_schedule(client.db, client.settings.tenant, spec, clock.now(), source="code")
    assert client.pulse("coded").source == "code"
    assert client.add_pulse("coded", "counter", "add", every="2h").source == "sql"

    # Removing keeps the slots as history.
    now = clock.now()
    assert open_slot(client.db, client.settings.tenant, schedule_id(client, "p"), now, now) is not None
    client.remove_pulse("p")
    assert [p.name for p in client.pulses()] == ["coded", "tick"]
    with client.db.session() as s:
        assert s.execute(select(func.count()).select_from(PULSE_SLOTS)
                         .where(PULSE_SLOTS.c.schedule == "p")).scalar_one() == 1
    with pytest.raises(NotFound):
        client.remove_pulse("p")
    with pytest.raises(NotFound):
        client.pause_pulse("p")
