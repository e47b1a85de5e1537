"""XState machine configurations run as garrison statecharts (``Statechart.from_xstate``).

The configurations are xstate's own documentation examples, as JSON: the traffic light with a nested
parallel pedestrian light and the file machine (guides/parallel), the delayed light (guides/delays), the
fetch machine (guides/states), the door (guides/guards), the word-processor toolbar (the parallel example
of the XState visualizer), and the Dog API promise machine of xstate's README, which garrison refuses
(``invoke``). Each asserts the values the docs print."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from garrison.automations.statecharts.chart import Statechart, Step
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core.contract import Message
from garrison.core.publisher import NullPublisher
from garrison.core.timers import TIMER_EVENT
from garrison.errors import DefinitionError

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

# guides/parallel.md: "A compound state node can contain parallel state nodes."
LIGHT = json.loads("""{
  "id": "light", "initial": "green",
  "states": {
    "green": {"on": {"TIMER": {"target": "yellow"}}},
    "yellow": {"on": {"TIMER": {"target": "red"}}},
    "red": {"type": "parallel", "states": {
      "walkSign": {"initial": "solid", "states": {
        "solid": {"on": {"COUNTDOWN": {"target": "flashing"}}},
        "flashing": {"on": {"STOP_COUNTDOWN": {"target": "solid"}}}}},
      "pedestrian": {"initial": "walk", "states": {
        "walk": {"on": {"COUNTDOWN": {"target": "wait"}}},
        "wait": {"on": {"STOP_COUNTDOWN": {"target": "stop"}}},
        "stop": {"type": "final"}}}}}
  }
}""")

# guides/parallel.md: the file machine, parallel at its root.
FILE = json.loads("""{
  "id": "file", "type": "parallel",
  "states": {
    "upload": {"initial": "idle", "states": {
      "idle": {"on": {"INIT_UPLOAD": {"target": "pending"}}},
      "pending": {"on": {"UPLOAD_COMPLETE": {"target": "success"}}},
      "success": {}}},
    "download": {"initial": "idle", "states": {
      "idle": {"on": {"INIT_DOWNLOAD": {"target": "pending"}}},
      "pending": {"on": {"DOWNLOAD_COMPLETE": {"target": "success"}}},
      "success": {}}}
  }
}""")

# The XState visualizer's parallel example: a word processor's toolbar.
WORD = json.loads("""{
  "id": "word", "type": "parallel",
  "states": {
    "bold": {"initial": "off", "states": {"on": {"on": {"TOGGLE_BOLD": "off"}}, "off": {"on": {"TOGGLE_BOLD": "on"}}}},
    "underline": {"initial": "off", "states": {
      "on": {"on": {"TOGGLE_UNDERLINE": "off"}}, "off": {"on": {"TOGGLE_UNDERLINE": "on"}}}},
    "italics": {"initial": "off", "states": {
      "on": {"on": {"TOGGLE_ITALICS": "off"}}, "off": {"on": {"TOGGLE_ITALICS": "on"}}}},
    "list": {"initial": "none", "states": {
      "none": {"on": {"BULLETS": "bullets", "NUMBERS": "numbers"}},
      "bullets": {"on": {"NONE": "none", "NUMBERS": "numbers"}},
      "numbers": {"on": {"BULLETS": "bullets", "NONE": "none"}}}}
  }
}""")

# guides/delays.md: delayed transitions, in milliseconds.
LIGHT_DELAY = json.loads("""{
  "id": "lightDelay", "initial": "green",
  "states": {
    "green": {"after": {"1000": "yellow"}},
    "yellow": {"after": {"500": "red"}},
    "red": {"after": {"2000": "green"}}
  }
}""")

# guides/states.md ("State Meta Data"): the fetch machine.
FETCH = json.loads("""{
  "id": "fetch", "initial": "idle",
  "states": {
    "idle": {"on": {"FETCH": {"target": "loading"}}},
    "loading": {
      "after": {"3000": "failure.timeout"},
      "on": {"RESOLVE": {"target": "success"}, "REJECT": {"target": "failure"},
             "TIMEOUT": {"target": "failure.timeout"}},
      "meta": {"message": "Loading..."}},
    "success": {"meta": {"message": "The request succeeded!"}},
    "failure": {"initial": "rejection", "states": {
        "rejection": {"meta": {"message": "The request failed."}},
        "timeout": {"meta": {"message": "The request timed out."}}},
      "meta": {"alert": "Uh oh."}}
  }
}""")

# guides/guards.md: the door, with its guard by name (a JSON configuration names its guards).
DOOR = json.loads("""{
  "id": "door", "initial": "closed",
  "states": {
    "closed": {"initial": "idle", "states": {"idle": {}, "error": {}},
      "on": {"OPEN": [{"target": "opened", "cond": "isAdmin"}, {"target": "closed.error"}]}},
    "opened": {"on": {"CLOSE": "closed"}}
  }
}""")

# xstate's README: the Dog API promise machine. Its invoke is what garrison refuses.
DOG_API = json.loads("""{
  "id": "Dog API", "initial": "idle", "context": {"dog": null},
  "states": {
    "idle": {"on": {"FETCH": "loading"}},
    "loading": {
      "invoke": {"id": "fetchDog", "src": "fetchDog",
                 "onDone": {"target": "resolved", "actions": "setDog"}, "onError": "rejected"},
      "on": {"CANCEL": "idle"}},
    "rejected": {"on": {"FETCH": "loading"}},
    "resolved": {"type": "final"}
  }
}""")


def event(name: str, data: dict[str, Any] | None = None, *, target: str | None = None) -> Message:
    return Message("acme", "k", 1, 1, name, data or {}, target, T0)


def walk(chart: Statechart, names: list[str], snapshot: Any = None) -> Step:
    step: Step | None = None
    for name in names:
        step = chart.step(snapshot, event(name), key="k", now=T0)
        snapshot = step.snapshot
    assert step is not None
    return step


def test_the_traffic_light_with_a_parallel_pedestrian_light_gives_the_values_the_docs_print() -> None:
    light = Statechart.from_xstate(LIGHT)
    assert light.name == "light"
    assert walk(light, ["TIMER", "TIMER"]).snapshot["value"] == {"red": {"walkSign": "solid", "pedestrian": "walk"}}
    counted = walk(light, ["TIMER", "TIMER", "COUNTDOWN"])
    assert counted.snapshot["value"] == {"red": {"walkSign": "flashing", "pedestrian": "wait"}}
    stopped = walk(light, ["STOP_COUNTDOWN"], counted.snapshot)
    assert stopped.snapshot["value"] == {"red": {"walkSign": "solid", "pedestrian": "stop"}}


def test_a_machine_parallel_at_its_root_runs_every_region_and_is_done_when_all_are_final() -> None:
    files = Statechart.from_xstate(FILE)
    first = walk(files, ["nothing"])
    assert first.snapshot["value"] == {"upload": "idle", "download": "idle"}        # initialState.value
    assert walk(files, ["INIT_UPLOAD", "UPLOAD_COMPLETE"]).snapshot["value"] == {"upload": "success",
                                                                                 "download": "idle"}
    word = Statechart.from_xstate(WORD)
    toggled = walk(word, ["TOGGLE_BOLD", "BULLETS", "NUMBERS"])
    assert toggled.snapshot["value"] == {"bold": "on", "underline": "off", "italics": "off", "list": "numbers"}
    both = Statechart.from_xstate({"id": "both", "type": "parallel", "states": {
        "a": {"initial": "x", "states": {"x": {"on": {"GO": "y"}}, "y": {"type": "final"}}},
        "b": {"initial": "x", "states": {"x": {"on": {"GO": "y"}}, "y": {"type": "final"}}}}})
    assert walk(both, ["GO"]).snapshot["status"] == "done"


def test_the_door_takes_the_first_transition_whose_named_guard_passes() -> None:
    door = Statechart.from_xstate(DOOR, guards={"isAdmin": lambda context, event: event.data.get("admin", False)})
    opened = door.step(None, event("OPEN", {"admin": True}), key="k", now=T0)
    assert opened.snapshot["value"] == "opened"
    closed = walk(door, ["CLOSE"], opened.snapshot)
    assert closed.snapshot["value"] == {"closed": "idle"}
    refused = door.step(closed.snapshot, event("OPEN", {"admin": False}), key="k", now=T0)
    assert refused.snapshot["value"] == {"closed": "error"} and refused.refused == ["isAdmin"]


def fire(chart: Statechart, step: Step, *, after: float, since: datetime = T0) -> Step:
    """The timer the step set ``after`` seconds after ``since``, fired when due (as the engine fires its row)."""
    [timer] = step.timers
    assert timer.due_at == since + timedelta(seconds=after)
    return chart.step(step.snapshot, event(TIMER_EVENT, timer.data, target=chart.name), key="k", now=timer.due_at)


def test_delays_in_milliseconds_become_durable_timers() -> None:
    light = Statechart.from_xstate(LIGHT_DELAY)
    green = walk(light, ["nothing"])
    yellow = fire(light, green, after=1.0)
    red = fire(light, yellow, after=0.5, since=T0 + timedelta(seconds=1))
    assert (yellow.snapshot["value"], red.snapshot["value"]) == ("yellow", "red")
    assert fire(light, red, after=2.0, since=T0 + timedelta(seconds=1.5)).snapshot["value"] == "green"

    fetch = Statechart.from_xstate(FETCH)
    loading = walk(fetch, ["FETCH"])
    assert fire(fetch, loading, after=3.0).snapshot["value"] == {"failure": "timeout"}
    assert walk(fetch, ["REJECT"], loading.snapshot).snapshot["value"] == {"failure": "rejection"}
    resolved = walk(fetch, ["RESOLVE"], loading.snapshot)
    assert resolved.snapshot["value"] == "success" and resolved.cancel_timers  # leaving loading cancels it


def test_v5_forms_guards_and_actions_as_objects_with_params_named_delays_ids_and_reentry() -> None:
    def add(context: dict[str, Any], event: Message, params: dict[str, Any]) -> None:
        context["total"] = context.get("total", 0) + params["by"]

    config = {
        "id": "v5", "initial": "idle", "context": {"total": 0},
        "states": {
            "idle": {"on": {
                "ADD": {"actions": [{"type": "add", "params": {"by": 2}}, {"type": "add", "params": {"by": 3}}]},
                "GO": {"target": "#v5.busy.deep", "guard": {"type": "ready"}}}},
            "busy": {"initial": "top", "entry": "count", "after": {"LONG": "#done"}, "states": {
                "top": {}, "deep": {"on": {"BACK": "#v5.idle"}}},
                "on": {"STAY": {"target": "busy"}, "AGAIN": {"target": "busy", "reenter": True}}},
            "end": {"id": "done", "type": "final"},
        },
    }
    chart = Statechart.from_xstate(
        config, guards={"ready": lambda c, e: c["total"] == 5},
        actions={"add": add, "count": lambda c, e: {**c, "entries": c.get("entries", 0) + 1}},
        delays={"LONG": "10m"},
    )
    added = walk(chart, ["GO", "ADD", "GO"])
    assert added.snapshot["value"] == {"busy": "deep"} and added.snapshot["context"] == {"total": 5, "entries": 1}
    assert [t.due_at for t in added.timers] == [T0 + timedelta(minutes=10)]
    stayed = walk(chart, ["STAY"], added.snapshot)
    assert stayed.snapshot["context"]["entries"] == 1 and not stayed.timers     # v5: no re-entry by default
    again = walk(chart, ["AGAIN"], added.snapshot)
    assert again.snapshot["context"]["entries"] == 2 and again.snapshot["value"] == {"busy": "top"}
    assert len(again.timers) == 1 and len(again.cancel_timers) == 1             # re-entered: timer restarted
    assert walk(chart, ["BACK"], added.snapshot).snapshot["value"] == "idle"
    assert fire(chart, added, after=600).snapshot["status"] == "done"


@pytest.mark.parametrize(("config", "kwargs", "part", "words"), [
    (DOG_API, {}, "invoke", "state 'loading': invoke: invoke (child actors, promises) is not supported"),
    ({"id": "m", "initial": "a", "states": {"a": {"always": [{"target": "b"}]}, "b": {}}}, {}, "always",
     "always (eventless transitions) is not supported"),
    ({"id": "m", "initial": "a", "states": {"a": {"on": {"GO": "h"}}, "h": {"type": "history"}}}, {}, "type",
     "history is not supported"),
    ({"id": "m", "initial": "a", "states": {"a": {"on": {"*": "a"}}}}, {}, "on '*'", "wildcard"),
    ({"id": "m", "initial": "a", "states": {"a": {"entry": "xstate.assign"}}}, {}, "entry",
     "xstate's built-in action 'xstate.assign'"),
    ({"id": "m", "initial": "a", "states": {"a": {"on": {"GO": {"target": "a", "guard": "nope"}}}}}, {},
     "on 'GO'", "unknown guard 'nope'"),
    ({"id": "m", "initial": "a", "states": {"a": {"after": {"SLOW": "a"}}}}, {}, "after 'SLOW'",
     "unknown delay 'SLOW'"),
    ({"id": "m", "initial": "a", "states": {"a": {"entry": {"type": "log", "params": {"x": 1}}}}},
     {"actions": {"log": lambda c, e: None}}, "entry", "takes no third argument"),
    ({"initial": "a", "states": {"a": {}}}, {}, "id", "has no id"),
    ({"id": "m", "initial": "a", "states": {"a": {"colour": "red"}}}, {}, "colour", "unknown key"),
])
def test_what_garrison_cannot_run_is_refused_at_definition_naming_the_state_and_the_key(
    config: dict[str, Any], kwargs: dict[str, Any], part: str, words: str
) -> None:
    with pytest.raises(DefinitionError) as refused:
        Statechart.from_xstate(config, **kwargs)
    assert refused.value.context["part"] == part and words in refused.value.message, refused.value.message


@pytest.fixture
def frozen(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Garrison]:
    fetch = Statechart.from_xstate(FETCH)
    client = Garrison(settings_for(backend), automations=[fetch], publisher=NullPublisher(), clock=FrozenClock(T0))
    yield client
    client.db.dispose()


def test_a_machine_from_xstate_runs_on_the_engine_and_its_delay_fires_from_a_durable_timer(frozen: Garrison) -> None:
    frozen.ingest("FETCH", "req-1")
    frozen.ingest("FETCH", "req-2")
    frozen.ingest("RESOLVE", "req-2")
    frozen.run_pending()
    assert frozen.state("fetch", "req-1")["value"] == "loading"
    clock = frozen.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(3.1)
    frozen.run_pending()
    assert frozen.state("fetch", "req-1")["value"] == {"failure": "timeout"}
    assert frozen.state("fetch", "req-2")["value"] == "success"
    assert frozen.replay("fetch").ok
