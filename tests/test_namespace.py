"""garrison's own identifiers live in a namespace no user input can reach (guarantee 10).

Before, an app event whose idempotency key happened to be ``timer:1`` or ``retry:1`` made timer 1's
firing, or failure 1's retry, look like a duplicate: nothing applied, the run slept forever. Now every key
garrison makes starts with ``garrison/``, and every entrance refuses that prefix from a user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from garrison import FrozenClock, Garrison, NullPublisher, Settings
from garrison.core.ingest import EventIn, write_events
from garrison.core.namespace import PREFIX, legacy_key, reserved
from garrison.errors import ValidationError
from garrison.models import EVENTS, FAILURES
from tests.apps.flaky import flaky

LEGACY_SPELLINGS = ["timer:1", "retry:1", "journey:x", "pulse:1:x:k", "node:x:n", "statechart:m:k:entry:1",
                    "actor:o:1"]


def frozen(settings: Settings) -> Garrison:
    return Garrison(settings, publisher=NullPublisher(), clock=FrozenClock())


@pytest.fixture
def journeys(settings_for: Callable[..., Settings], backend: str) -> Iterator[Garrison]:
    client = frozen(settings_for(backend, automations=("tests.apps.journeys",)))
    yield client
    client.db.dispose()


@pytest.fixture
def machines(settings_for: Callable[..., Settings], backend: str) -> Iterator[Garrison]:
    client = frozen(settings_for(backend, automations=("tests.apps.flaky",)))
    yield client
    client.db.dispose()


def stored_keys(client: Garrison) -> list[str]:
    with client.db.session() as s:
        return [k for k in s.execute(select(EVENTS.c.idempotency_key).order_by(EVENTS.c.id)).scalars() if k]


def test_an_app_event_keyed_timer_1_no_longer_swallows_timer_1s_firing(journeys: Garrison) -> None:
    for ik in LEGACY_SPELLINGS:
        journeys.ingest("app/unrelated", "other", {}, idempotency_key=ik)
    journeys.ingest("test/nap", "k", {"for": "1s", "n": 7})
    journeys.run_pending()
    journeys.clock.advance(2)  # type: ignore[attr-defined]
    journeys.run_pending()
    [run] = journeys.runs(automation="sleeper", key="k")
    assert run.status == "completed" and run.result["n"] == 7
    assert reserved("timer", 1) in stored_keys(journeys)


def test_an_app_event_keyed_retry_1_no_longer_swallows_the_retry_of_failure_1(
    machines: Garrison, tmp_path: Path
) -> None:
    journeys = machines
    blocker = tmp_path / "down"
    blocker.touch()
    flaky.send("charge", "acct", {"n": 1, "blocker": str(blocker)}, client=journeys)
    journeys.run_pending()
    [failure_id] = journeys.failures()
    assert failure_id == 1
    journeys.ingest("app/unrelated", "other", {}, idempotency_key="retry:1")
    blocker.unlink()
    retried = journeys.retry(failure_id)
    assert not retried.duplicate and retried.idempotency_key == "garrison/retry:1"
    journeys.run_pending()
    assert journeys.state("flaky", "acct") == {"charged": [1]}
    with journeys.db.session() as s:
        assert s.execute(select(FAILURES.c.status)).scalar_one() == "retried"


@pytest.mark.parametrize("call", ["ingest", "ingest_many", "check_many", "machine send"])
def test_a_user_key_in_garrisons_namespace_is_refused_with_its_field_and_nothing_is_written(
    machines: Garrison, call: str
) -> None:
    journeys = machines
    key = PREFIX + "timer:1"
    with pytest.raises(ValidationError) as info:
        if call == "ingest":
            journeys.ingest("app/x", "k", {}, idempotency_key=key)
        elif call == "machine send":
            flaky.send("charge", "k", {}, idempotency_key=key, client=journeys)
        else:
            getattr(journeys, call)([{"name": "app/x", "key": "k"},
                                     {"name": "app/x", "key": "k", "idempotency_key": key}])
    assert info.value.field.endswith("idempotency_key")
    assert info.value.field == ("idempotency_key" if call in ("ingest", "machine send")
                                else "events[1].idempotency_key")
    assert stored_keys(journeys) == [] and journeys.run_pending() == 0


def test_every_key_garrison_makes_for_itself_is_in_its_namespace(journeys: Garrison) -> None:
    journeys.ingest("test/nap", "k", {"for": "1s"})
    journeys.ingest("test/steps", "s", {"n": 1, "between": "1s"})
    journeys.run_pending()
    journeys.clock.advance(2)  # type: ignore[attr-defined]
    journeys.run_pending()
    made = stored_keys(journeys)
    assert made and all(k.startswith(PREFIX) for k in made), made
    assert {k.split(":", 1)[0] for k in made} >= {"garrison/timer", "garrison/journey", "garrison/step"}


def test_a_listener_send_stored_before_the_upgrade_is_still_a_duplicate_when_its_effect_is_retried(
    journeys: Garrison,
) -> None:
    """In flight across the upgrade: a listener that sent under the old spelling and is retried after it
    sends nothing twice (its new key's legacy spelling is found)."""
    old = "default:effect:5:send:1"
    new = reserved("send", "default:effect:5", 1)
    assert legacy_key(new) == old
    event = EventIn(tenant="default", name="charge", key="acct", data={"n": 1}, target="flaky")
    with journeys.db.session() as s:
        [first] = write_events(s, journeys.db, [EventIn(**{**_fields(event), "idempotency_key": old})],
                               journeys.clock.now())
        [again] = write_events(s, journeys.db, [EventIn(**{**_fields(event), "idempotency_key": new})],
                               journeys.clock.now())
    assert again.duplicate and again.id == first.id


def _fields(event: EventIn) -> dict[str, object]:
    return {f: getattr(event, f) for f in EventIn.__slots__}  # type: ignore[attr-defined]
