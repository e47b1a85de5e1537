"""Hostile input never reaches the database (guarantee 7), property-based, on both backends.

Every entrance is handed names, keys, tenants, idempotency keys and data made of NUL bytes, lone
surrogates, nesting from 1 to 10,000 deep, NaN and the infinities, integers past 2**53, non-JSON Python
values, and plain JSON. Whatever happens: nothing but ``ValidationError`` escapes (HTTP answers in
garrison's error shape, never a 500; the CLI exits 2 with one line, never a traceback), nothing is written
on refusal, and whatever was accepted is applied by the engine without a failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from garrison import Garrison, NullPublisher, Settings
from garrison.automations.statecharts.actors import hold_actor
from garrison.cli import cli
from garrison.errors import ValidationError
from garrison.http.app import build_app
from garrison.models import ENTITIES, EVENTS, FAILURES
from tests.apps.echo import echo
from tests.apps.nodes import counter, mesh

APPS = ("tests.apps.echo", "tests.apps.nodes", "tests.apps.statecharts")
API_KEY = "hostile-input-test-key-0123456789"
BAD_TEXT = ["a\x00b", "\x00", "\ud800", "x\udfffy"]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


def nested_text(depth: int) -> str:
    """The JSON text of ``nested(depth)``, built without recursion."""
    text = '"bottom"'
    for i in range(depth):
        text = f"[{text}]" if i % 2 else f'{{"d":{text}}}'
    return text


class Odd:
    """Not JSON."""


class Deep:
    """Data nested ``depth`` deep, made only when an entrance is called (hypothesis cannot print it)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


def expand(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: nested(v.depth) if isinstance(v, Deep) else v for k, v in data.items()}
    return data


def to_text(data: Any) -> str:
    """JSON text of the (unexpanded) data, NaN and surrogates included; repr when it is not JSON at all."""
    if isinstance(data, dict) and any(isinstance(v, Deep) for v in data.values()):
        parts = []
        for k, v in data.items():
            inner = nested_text(v.depth) if isinstance(v, Deep) else to_text(v)
            parts.append(f"{json.dumps(k)}:{inner}")
        return "{" + ",".join(parts) + "}"
    try:
        return json.dumps(data, allow_nan=True)
    except (TypeError, ValueError):
        return repr(data)


texts = st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(BAD_TEXT))
leaves = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), st.sampled_from(BAD_TEXT),
    st.integers(min_value=-(2**64), max_value=2**64), st.sampled_from([2**53 - 1, 2**53, -(2**53)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([{1, 2}, b"bytes", Odd(), 1j, (1, 2)]),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(BAD_TEXT), st.integers(0, 3)), inner,
                        max_size=3),
    ),
    max_leaves=8,
)
deep = st.sampled_from([1, 30, 63, 64, 65, 100, 500, 800, 10_000]).map(Deep)
datas = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(BAD_TEXT)), st.one_of(values, deep), max_size=3),
    st.sampled_from([None, [], "text", 3]),
)
idempotency_keys = st.one_of(st.none(), texts, st.sampled_from(["garrison/timer:1", "garrison/x", "timer:1"]))
tenants = st.one_of(st.none(), st.sampled_from(["default", "acme", *BAD_TEXT]))
ENTRANCES = ["ingest", "ingest_many", "machine send", "node send", "node broadcast", "node set", "actor",
             "http", "cli"]


@pytest.fixture
def hostile(settings_for: Callable[..., Settings], backend: str) -> Iterator[Garrison]:
    settings = settings_for(backend, automations=APPS, api_keys=(f"default:{API_KEY}", f"acme:{API_KEY}x"))
    client = Garrison(settings, publisher=NullPublisher())
    client.registry  # noqa: B018 - the automations are known, as in a worker or a configured web process
    yield client
    client.db.dispose()


def counts(client: Garrison) -> tuple[int, int]:
    with client.db.session() as s:
        events = s.execute(select(func.count()).select_from(EVENTS)).scalar_one()
        entities = s.execute(select(func.max(ENTITIES.c.version))).scalar() or 0
    return int(events), int(entities)


def failures(client: Garrison) -> list[str]:
    with client.db.session() as s:
        return [f"{r.automation} {r.message}: {r.error}" for r in s.execute(select(FAILURES))]


def call(client: Garrison, entrance: str, name: Any, key: Any, data: Any, tenant: Any, ik: Any) -> bool:
    """Hand the input to one entrance. True when it was accepted; ValidationError when refused."""
    if entrance == "http":
        return _http(client, name, key, data, tenant, ik)
    if entrance == "cli":
        return _cli(client, name, key, data, tenant, ik)
    data = expand(data)
    if entrance == "ingest":
        client.ingest("app/echo", key, data, tenant=tenant, idempotency_key=ik)
    elif entrance == "ingest_many":
        client.ingest_many([{"name": "app/echo", "key": "k"},
                            {"name": name, "key": key, "data": data, "tenant": tenant, "idempotency_key": ik,
                             "target": "echo"}])
    elif entrance == "machine send":
        echo.send("keep", key, data, tenant=tenant, idempotency_key=ik, client=client)
    elif entrance == "node send":
        mesh.send("dashboard", "report", data, tenant=tenant, idempotency_key=ik, client=client)
    elif entrance == "node broadcast":
        mesh.broadcast(name, data, tenant=tenant, client=client)
    elif entrance == "node set":
        counter.state.set(lambda s: {"count": 1, "v": data}, client=client, tenant=tenant)
    else:
        with hold_actor(client, "tally", key, tenant=tenant) as actor:
            actor.send("tick", {"n": data}, idempotency_key=ik)
    return True


def _http(client: Garrison, name: Any, key: Any, data: Any, tenant: Any, ik: Any) -> bool:
    head = {"name": name, "key": key, "idempotency_key": ik, "target": "echo"}
    fields = ",".join(f"{json.dumps(k)}:{to_text(v)}" for k, v in head.items())
    # Surrogates go out as their (invalid) UTF-8 bytes: the server must refuse the body, not crash.
    text = ("{" + fields + ',"data":' + to_text(data) + "}").encode("utf-8", "surrogatepass")
    api_key = API_KEY if tenant in (None, "default") else API_KEY + "x"
    with TestClient(build_app(client), raise_server_exceptions=True) as web:
        response = web.post("/events", content=text,
                            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    assert response.status_code in (202, 401, 403, 422), response.text
    if response.status_code != 202:
        body_out = response.json()
        assert set(body_out) == {"error", "message", "field", "errors"}, body_out
        raise ValidationError(body_out["message"], field=body_out["field"] or "body")
    return True


def _cli(client: Garrison, name: Any, key: Any, data: Any, tenant: Any, ik: Any) -> bool:
    text = to_text(data)
    args = ["ingest", *(["--tenant", tenant] if tenant else []), *(["--idempotency-key", ik] if ik else []),
            "--target", "echo", "keep", key, text]
    if any(not isinstance(a, str) or "\x00" in a for a in args):
        raise ValidationError("an argument a shell cannot pass", field="argv")
    # Arguments reach a process as bytes: one that is not UTF-8 arrives with lone surrogates.
    result = CliRunner(env=client.settings.as_env()).invoke(cli, args, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code != 0:
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        raise ValidationError(result.output, field="cli")
    return True


@pytest.mark.slow
@pytest.mark.parametrize("entrance", ENTRANCES)
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=texts, key=texts, data=datas, tenant=tenants, ik=idempotency_keys)
def test_every_entrance_refuses_hostile_input_with_a_validation_error_writing_nothing_and_applies_what_it_took(
    hostile: Garrison, entrance: str, name: Any, key: Any, data: Any, tenant: Any, ik: Any
) -> None:
    before = counts(hostile)
    try:
        accepted = call(hostile, entrance, name, key, data, tenant, ik)
    except ValidationError:
        accepted = False
    if not accepted:
        assert counts(hostile) == before, "a refused call wrote something"
        return
    hostile.run_pending()
    assert failures(hostile) == []


@pytest.mark.parametrize("depth", [65, 500, 800, 10_000])
def test_data_nested_past_the_limit_is_refused_at_ingest_naming_the_field_not_later_in_the_worker(
    hostile: Garrison, depth: int
) -> None:
    with pytest.raises(ValidationError) as info:
        hostile.ingest("app/echo", "k", {"v": nested(depth)})
    assert info.value.field == "data" and "GARRISON_MAX_NESTING" in info.value.message
    assert counts(hostile) == (0, 0)
    hostile.ingest("app/echo", "k", {"v": nested(63)})
    hostile.run_pending()
    assert failures(hostile) == [] and hostile.state("echo", "k")["n"] == 1


@pytest.mark.parametrize(("data", "why"), [
    ({"v": "a\x00"}, "NUL"), ({"v\ud800": 1}, "surrogate"), ({"v": float("nan")}, "nan"),
    ({"v": float("inf")}, "inf"), ({"v": 2**53}, "2**53"), ({"v": {1, 2}}, "set"), ({1: "v"}, "not a string"),
])
def test_each_kind_of_hostile_data_is_refused_with_a_reason(hostile: Garrison, data: Any, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        hostile.ingest("app/echo", "k", data)
    assert info.value.field == "data" and why in info.value.message
    assert counts(hostile) == (0, 0)


@pytest.mark.parametrize("field", ["name", "key", "tenant", "idempotency_key", "target"])
@pytest.mark.parametrize("text", BAD_TEXT)
def test_a_nul_or_lone_surrogate_in_any_text_field_is_refused_naming_it(
    hostile: Garrison, field: str, text: str
) -> None:
    args: dict[str, Any] = {"name": "keep", "key": "k", "target": "echo", field: text}
    with pytest.raises(ValidationError) as info:
        hostile.ingest(args.pop("name"), args.pop("key"), {}, **args)
    assert info.value.field == field
    assert counts(hostile) == (0, 0)


def test_the_python_api_refuses_an_unknown_target_or_reducer_when_it_knows_its_automations(
    hostile: Garrison, settings_for: Callable[..., Settings], backend: str
) -> None:
    with pytest.raises(ValidationError) as info:
        hostile.ingest("keep", "k", {}, target="nope")
    assert info.value.field == "target"
    with pytest.raises(ValidationError) as info:
        hostile.ingest_many([{"name": "nope", "key": "k", "target": "echo"}])
    assert info.value.field == "events[0].name"
    assert counts(hostile) == (0, 0)
    # A machine this process imported but does not run (a listener's send to it): known, not refused.
    other = Garrison(hostile.settings.with_overrides(automations=("tests.apps.nodes",)), publisher=NullPublisher())
    assert "echo" not in other.registry
    assert not echo.send("keep", "k", {}, client=other).duplicate
    with pytest.raises(ValidationError):
        echo.send("nope", "k", {}, client=other)
    other.db.dispose()
    # A web process that only ingests has no automations: it cannot know, and stores the event as sent.
    web = Garrison(hostile.settings.with_overrides(automations=()), publisher=NullPublisher())
    assert not web.ingest("keep", "k", {}, target="nope").duplicate
    web.db.dispose()


def test_a_handler_that_returns_what_cannot_be_stored_records_a_failure_and_the_batch_goes_on(
    hostile: Garrison,
) -> None:
    hostile.ingest("app/echo", "a", {"v": 1})
    hostile.register(_Poison("poison"))
    hostile.ingest("poison", "a", {"make": "nul"}, target="poison")
    hostile.ingest("poison", "a", {"make": "deep"}, target="poison")
    hostile.ingest("app/echo", "a", {"v": 2})
    hostile.run_pending()
    assert hostile.state("echo", "a") == {"n": 2, "last": {"v": 2}}
    assert sorted(f.split(":")[0] for f in failures(hostile)) == ["poison poison", "poison poison"]
    assert hostile.state("poison", "a") is None


from garrison.core.contract import ApplyContext, Automation, Message, Outcome  # noqa: E402


class _Poison(Automation):
    """Returns a state with a NUL, or nested far too deep, depending on the message."""

    def accepts(self, message: Message) -> bool:
        return message.target == self.name

    def apply(self, state: Any, message: Message, ctx: ApplyContext) -> Outcome:
        bad = {"v": "nul\x00"} if message.data["make"] == "nul" else nested(1000)
        return Outcome(state=bad, changed=True, label=message.name)
