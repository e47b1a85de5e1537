"""HTTP ingest (``POST /events``, ``garrison serve``): what is accepted lands in SQL for the API key's tenant
and is applied; what is refused (bad key, bad field, oversized body, another tenant) writes nothing and says
why; an Idempotency-Key makes a retry safe. Through Starlette's TestClient against the real database of
both backends, and once through ``garrison serve`` as a real process with a real worker."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from garrison.cli import cli
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.errors import ConfigurationError
from garrison.http import ApiKeys, create_app
from garrison.models import EVENTS
from tests.harness import ROOT, WorkerProcess, child_env, wait_until

with warnings.catch_warnings():
    # Starlette asks for httpx2 here; httpx 0.28 is what the test extra pins, and it works.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

BODY_LIMIT = 4096
TENANTS = ("acme", "beta")


@dataclass
class Api:
    """An app on a real database, a client of the same database, and one fresh API key per tenant."""

    client: Garrison
    http: TestClient
    keys: dict[str, str]

    def post(self, body: Any, tenant: str = "acme", **headers: str) -> httpx.Response:
        answer: httpx.Response = self.http.post(
            "/events", json=body, headers={"Authorization": f"Bearer {self.keys[tenant]}", **headers}
        )
        return answer


def new_keys() -> dict[str, str]:
    """Keys made up for each test: no secret lives in the repository."""
    return {tenant: secrets.token_hex(16) for tenant in TENANTS}


def key_setting(keys: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{tenant}:{key}" for tenant, key in keys.items())


@pytest.fixture
def api(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Api]:
    keys = new_keys()
    settings = settings_for(backend, api_keys=key_setting(keys), http_max_body_bytes=BODY_LIMIT,
                            max_payload_bytes=BODY_LIMIT)
    client = Garrison(settings, publisher=NullPublisher())
    with TestClient(create_app(client)) as http:
        yield Api(client, http, keys)
    client.db.dispose()


def stored(client: Garrison, tenant: str) -> list[dict[str, Any]]:
    """The tenant's event log, in id order."""
    with client.db.session() as s:
        rows = s.execute(
            select(EVENTS.c.id, EVENTS.c.name, EVENTS.c.key, EVENTS.c.seq, EVENTS.c.data, EVENTS.c.idempotency_key,
                   EVENTS.c.target)
            .where(EVENTS.c.tenant == tenant).order_by(EVENTS.c.id)
        ).mappings()
        return [dict(row) for row in rows]


def nothing_stored(client: Garrison) -> bool:
    return all(stored(client, tenant) == [] for tenant in (*TENANTS, client.settings.tenant))


# -- accepted --------------------------------------------------------------------------------------


def test_an_event_is_stored_for_the_keys_tenant_and_the_automation_applies_it(api: Api) -> None:
    answer = api.post({"name": "add", "key": "order-1", "data": {"n": 1}, "target": "counter"})

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["tenant"] == "acme"
    [event] = body["events"]
    assert (event["name"], event["key"], event["seq"], event["duplicate"]) == ("add", "order-1", 1, False)
    assert stored(api.client, "acme") == [{"id": event["id"], "name": "add", "key": "order-1", "seq": 1,
                                           "data": {"n": 1}, "idempotency_key": None, "target": "counter"}]
    assert stored(api.client, "beta") == []

    api.client.run_pending("acme")
    assert api.client.state("counter", "order-1", tenant="acme")["count"] == 10  # acme's step is 10


def test_the_key_can_also_come_in_x_api_key(api: Api) -> None:
    answer = api.http.post("/events", json={"name": "add", "key": "k"}, headers={"X-API-Key": api.keys["beta"]})

    assert answer.status_code == 202, answer.text
    assert [e["key"] for e in stored(api.client, "beta")] == ["k"]


def test_a_batch_is_stored_in_order_with_a_sequence_per_key(api: Api) -> None:
    answer = api.post({"events": [
        {"name": "add", "key": "a", "data": {"n": 1}, "target": "counter"},
        {"name": "add", "key": "b"},
        {"name": "add", "key": "a", "data": {"n": 2}, "target": "counter"},
    ]}, tenant="beta")

    assert answer.status_code == 202, answer.text
    events = answer.json()["events"]
    assert [(e["key"], e["seq"]) for e in events] == [("a", 1), ("b", 1), ("a", 2)]
    assert [(e["id"], e["key"], e["seq"], e["data"], e["target"]) for e in stored(api.client, "beta")] == [
        (events[0]["id"], "a", 1, {"n": 1}, "counter"), (events[1]["id"], "b", 1, {}, None),
        (events[2]["id"], "a", 2, {"n": 2}, "counter"),
    ]
    api.client.run_pending("beta")
    assert api.client.state("counter", "a", tenant="beta")["applied"] == [["", 1], ["", 2]]


# -- refused ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-a-key-of-anyone"},
    {"X-API-Key": "not-a-key-of-anyone"},
    {"Authorization": "Bearer "},
], ids=["no key", "wrong bearer", "wrong x-api-key", "empty bearer"])
def test_a_missing_or_unknown_key_gets_401_and_writes_nothing(api: Api, headers: dict[str, str]) -> None:
    for body in ({"name": "add", "key": "k"}, {"events": [{"name": "add", "key": "k"}]}, {"name": 1}):
        answer = api.http.post("/events", json=body, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    # Even a body that is not JSON is answered 401: without a key, a caller learns nothing about its body.
    garbage = api.http.post("/events", content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert garbage.status_code == 401
    # A key sent with another scheme is not taken for a bearer token.
    basic = api.http.post("/events", json={"name": "add", "key": "k"},
                          headers={"Authorization": f"Basic {api.keys['acme']}"})
    assert basic.status_code == 401
    assert nothing_stored(api.client)


@pytest.mark.parametrize(("body", "field"), [
    ({"events": [{"name": "add", "key": "a"}, {"name": "add", "key": "b"}, {"key": "c"}]}, "events[2].name"),
    ({"events": [{"name": "add", "key": "a"}, {"name": "add", "key": "b", "data": [1, 2]}]}, "events[1].data"),
    ({"events": [{"name": "add", "key": "a"}, {"name": "add", "key": 7}]}, "events[1].key"),
    ({"events": [{"name": "add", "key": "a", "when": 1}]}, "events[0].when"),
    ({"events": []}, "events"),
    ({"name": "add"}, "key"),
    ({"name": "", "key": "a"}, "name"),
    ([{"name": "add", "key": "a"}], "body"),
    # Refused by garrison's own validation (after the body's shape was accepted), with its field:
    ({"events": [{"name": "add", "key": "a"}, {"name": "add", "key": "b"}, {"name": "   ", "key": "c"}]},
     "events[2].name"),
    ({"events": [{"name": "add", "key": "a"}, {"name": "add", "key": "b", "target": "nobody"}]}, "events[1].target"),
    ({"events": [{"name": "add", "key": "a"}, {"name": "shipped", "key": "b", "target": "counter"}]},
     "events[1].name"),
    ({"name": "add", "key": "a", "idempotency_key": "  "}, "idempotency_key"),
])
def test_a_malformed_body_gets_422_naming_the_field_and_writes_nothing(api: Api, body: Any, field: str) -> None:
    answer = api.post(body)

    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert (error["error"], error["field"]) == ("invalid", field)
    assert field in [e["field"] for e in error["errors"]]
    assert nothing_stored(api.client)


def test_data_over_the_payload_limit_gets_422_naming_the_event(
    backend: str, settings_for: Callable[..., Settings]
) -> None:
    keys = new_keys()
    settings = settings_for(backend, api_keys=key_setting(keys), max_payload_bytes=100)
    client = Garrison(settings, publisher=NullPublisher())
    with TestClient(create_app(client)) as http:
        answer = http.post("/events", headers={"X-API-Key": keys["acme"]}, json={"events": [
            {"name": "add", "key": "a"}, {"name": "add", "key": "b", "data": {"blob": "x" * 200}},
        ]})
    assert answer.status_code == 422, answer.text
    assert (answer.json()["error"], answer.json()["field"]) == ("payload_too_large", "events[1].data")
    assert "GARRISON_MAX_PAYLOAD_BYTES" in answer.json()["message"]
    assert nothing_stored(client)
    client.db.dispose()


def test_json_that_does_not_parse_gets_422_naming_the_body(api: Api) -> None:
    answer = api.http.post("/events", content=b'{"name": "add", "key": ',
                           headers={"X-API-Key": api.keys["acme"], "Content-Type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["field"] == "body"
    # Without a JSON content type the body is not read as JSON, and the answer says what to send.
    plain = api.http.post("/events", content=b'{"name": "add", "key": "k"}', headers={"X-API-Key": api.keys["acme"]})
    assert plain.status_code == 422
    assert "Content-Type: application/json" in plain.json()["message"]
    assert nothing_stored(api.client)


def test_an_oversized_body_gets_413_before_it_is_parsed(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.keys['acme']}", "Content-Type": "application/json"}
    too_big = b'{"name": "add", "key": "k", "data": {"blob": "' + b"x" * BODY_LIMIT + b'"}}'
    # Declared too big in Content-Length: refused without reading it (and it is not even valid JSON).
    declared = api.http.post("/events", content=too_big[:-1], headers=headers)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == "body_too_large"
    assert "Content-Length" in declared.json()["message"]
    # Streamed without a Content-Length: counted as it arrives.
    streamed = api.http.post("/events", content=iter([too_big[:3000], too_big[3000:]]), headers=headers)
    assert streamed.status_code == 413, streamed.text
    assert "GARRISON_HTTP_MAX_BODY_BYTES" in streamed.json()["message"]
    assert nothing_stored(api.client)

    # At the limit exactly, it is accepted.
    prefix, suffix = b'{"name": "add", "key": "k", "data": {"blob": "', b'"}}'
    exact = prefix + b"x" * (BODY_LIMIT - len(prefix) - len(suffix)) + suffix
    assert len(exact) == BODY_LIMIT
    assert api.http.post("/events", content=exact, headers=headers).status_code == 202
    assert len(stored(api.client, "acme")) == 1


# -- idempotency and tenants -----------------------------------------------------------------------


def test_the_idempotency_key_header_stores_a_retried_event_once(api: Api) -> None:
    first = api.post({"name": "add", "key": "k", "data": {"n": 1}}, **{"Idempotency-Key": "req-1"})
    again = api.post({"name": "add", "key": "k", "data": {"n": 1}}, **{"Idempotency-Key": "req-1"})

    assert (first.status_code, again.status_code) == (202, 202)
    [one], [two] = first.json()["events"], again.json()["events"]
    assert (one["duplicate"], two["duplicate"]) == (False, True)
    assert (two["id"], two["seq"], two["idempotency_key"]) == (one["id"], 1, "req-1")
    assert [e["idempotency_key"] for e in stored(api.client, "acme")] == ["req-1"]

    conflicting = api.post({"name": "add", "key": "k", "idempotency_key": "other"}, **{"Idempotency-Key": "req-2"})
    assert conflicting.status_code == 422
    assert conflicting.json()["field"] == "idempotency_key"
    assert len(stored(api.client, "acme")) == 1


def test_a_batch_derives_one_idempotency_key_per_event_from_the_header(api: Api) -> None:
    batch = {"events": [{"name": "add", "key": "a"}, {"name": "add", "key": "b", "idempotency_key": "own"},
                        {"name": "add", "key": "a"}]}
    first = api.post(batch, **{"Idempotency-Key": "batch-7"})
    again = api.post(batch, **{"Idempotency-Key": "batch-7"})

    assert [e["idempotency_key"] for e in first.json()["events"]] == ["batch-7:0", "own", "batch-7:2"]
    assert [e["duplicate"] for e in first.json()["events"]] == [False, False, False]
    assert [e["duplicate"] for e in again.json()["events"]] == [True, True, True]
    assert [e["id"] for e in again.json()["events"]] == [e["id"] for e in first.json()["events"]]
    assert len(stored(api.client, "acme")) == 3


def test_a_key_writes_only_its_own_tenant(api: Api) -> None:
    other = api.post({"name": "add", "key": "k", "tenant": "beta"})
    assert other.status_code == 403, other.text
    assert (other.json()["error"], other.json()["field"]) == ("forbidden", "tenant")
    in_batch = api.post({"events": [{"name": "add", "key": "k", "tenant": "acme"},
                                    {"name": "add", "key": "k", "tenant": "beta"}]})
    assert in_batch.status_code == 403
    assert in_batch.json()["field"] == "events[1].tenant"
    assert nothing_stored(api.client)

    # The same idempotency key in two tenants is two events: a tenant never sees another's keys.
    a = api.post({"name": "add", "key": "k", "tenant": "acme"}, **{"Idempotency-Key": "same"})
    b = api.post({"name": "add", "key": "k"}, tenant="beta", **{"Idempotency-Key": "same"})
    assert (a.json()["tenant"], b.json()["tenant"]) == ("acme", "beta")
    assert [e["duplicate"] for e in (*a.json()["events"], *b.json()["events"])] == [False, False]
    assert [len(stored(api.client, t)) for t in ("acme", "beta", api.client.settings.tenant)] == [1, 1, 0]


# -- health, description, settings ----------------------------------------------------------------


def test_healthz_answers_503_until_the_tables_exist(backend: str, settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(backend, api_keys=key_setting(new_keys()))
    client = Garrison(settings, publisher=NullPublisher())
    with TestClient(create_app(client)) as http:
        assert http.get("/healthz").json() == {"status": "ok", "database": "ok"}
        client.db.drop_all()
        down = http.get("/healthz")
        assert down.status_code == 503
        assert down.json()["status"] == "unavailable"
        client.init_db()
        assert http.get("/healthz").status_code == 200
    client.db.dispose()


def test_the_openapi_description_lists_post_events_with_its_schemas_and_security(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=key_setting(new_keys()))
    with TestClient(create_app(settings=settings)) as http:  # the app builds (and closes) its own client
        spec = http.get("/openapi.json").json()

    post = spec["paths"]["/events"]["post"]
    schemas = spec["components"]["schemas"]
    request = post["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"].rsplit("/", 1)[-1] for ref in request["oneOf"]] == ["EventBody", "BatchBody"]
    assert schemas["EventBody"]["required"] == ["name", "key"]
    assert schemas["BatchBody"]["properties"]["events"]["items"]["$ref"].endswith("/EventBody")
    assert post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/IngestResponse")
    for status in ("401", "403", "413", "422"):
        assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert set(schemas["IngestedOut"]["properties"]) >= {"id", "seq", "duplicate"}
    assert [p["name"] for p in post["parameters"]] == ["Idempotency-Key"]
    assert spec["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <API key>`"},
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                         "description": "`X-API-Key: <API key>`"},
    }
    assert post["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert "get" in spec["paths"]["/healthz"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_keys_map_to_their_tenant_and_are_never_shown() -> None:
    keys = new_keys()
    settings = Settings.from_env({"GARRISON_API_KEYS": f"acme:{keys['acme']}, beta:{keys['beta']}:with-colon"})
    parsed = ApiKeys.from_settings(settings)

    assert parsed.tenant_for(keys["acme"]) == "acme"
    assert parsed.tenant_for(f"{keys['beta']}:with-colon") == "beta"  # the key is all after the first colon
    assert parsed.tenant_for(keys["beta"]) is None
    assert parsed.tenant_for("") is None
    assert parsed.tenants == ["acme", "beta"]
    assert keys["acme"] not in repr(parsed) + repr(settings)


@pytest.mark.parametrize(("pairs", "words"), [
    ((), "at least one API key"),
    (("acme",), "pair 1 must look like tenant:key"),
    (("acme:" + "k" * 20, ":" + "k" * 20), "pair 2 must look like tenant:key"),
    (("acme:tooShortKey1",), "shorter than 16"),
    (("acme:" + "k" * 20, "beta:" + "k" * 20), "same key is given for tenants 'acme' and 'beta'"),
])
def test_api_keys_that_cannot_work_are_refused_without_showing_a_key(pairs: tuple[str, ...], words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ApiKeys.from_settings(Settings(api_keys=pairs))
    assert info.value.context["field"] == "api_keys"
    assert words in str(info.value)
    for secret in (pair.partition(":")[2] for pair in pairs):
        assert not secret or secret not in str(info.value)


def test_serve_without_api_keys_stops_with_a_one_line_error(tmp_path: Path) -> None:
    env = {**Settings(data_dir=tmp_path).as_env(), "GARRISON_API_KEYS": ""}
    result = CliRunner(env=env).invoke(cli, ["serve", "--port", "8123"])
    assert result.exit_code == 2
    assert "GARRISON_API_KEYS" in result.output and "setting: api_keys" in result.output


def test_without_the_http_extra_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("fastapi", "uvicorn", "garrison.http.app"):
        monkeypatch.setitem(sys.modules, module, None)  # `import fastapi` now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'garrison\[http\]'"):
        create_app(Garrison(Settings(data_dir=tmp_path, api_keys=key_setting(new_keys()))))
    env = {**Settings(data_dir=tmp_path).as_env(), "GARRISON_API_KEYS": key_setting(new_keys())[0]}
    result = CliRunner(env=env).invoke(cli, ["serve"])
    assert result.exit_code == 2
    assert "needs uvicorn, which is not installed: pip install 'garrison[http]'" in result.output


# -- a real server, a real worker ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.worker
def test_garrison_serve_takes_an_event_over_http_that_a_real_worker_applies(
    backend: str, settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    keys = new_keys()
    settings = settings_for(backend, api_keys=key_setting(keys))
    worker(settings)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "garrison.cli", "serve", "--port", str(port)], cwd=ROOT, env=child_env(settings),
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = WorkerProcess(proc, log)
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"garrison serve exited with {proc.returncode}:\n{server.output}")
            try:
                return httpx.get(f"{base}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=30, what="garrison serve to answer /healthz")
        answer = httpx.post(f"{base}/events", headers={"X-API-Key": keys["acme"], "Idempotency-Key": "e2e"},
                            json={"name": "add", "key": "over-http", "data": {"n": 1}, "target": "counter"})
        assert answer.status_code == 202, answer.text
        [event] = answer.json()["events"]

        client = Garrison(settings, publisher=NullPublisher())

        def applied() -> Any:
            state = client.state("counter", "over-http", tenant="acme")
            return state if state and state["count"] else None

        assert wait_until(applied, timeout=30, what="the worker to apply the event") == {
            "count": 10, "applied": [["", 1]]}  # acme's step is 10: the key's tenant reached the worker
        assert [(e["id"], e["idempotency_key"]) for e in stored(client, "acme")] == [(event["id"], "e2e")]
        client.db.dispose()
    finally:
        server.stop()


@pytest.mark.parametrize(("body", "why"), [
    (b'{"name": "add", "key": "k", "data": {"s": "\xff\xfe"}}', "not UTF-8"),
    (b'{"name": "add", "key": "k", "data": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}", "nested 1,000 deep"),
    (b'{"name": "add", "key": "k", "data": {"x": ' + b"9" * 2000 + b"}}", "a 2,000-digit number"),
])
def test_a_body_that_cannot_be_read_gets_422_in_garrisons_error_shape(api: Api, body: bytes, why: str) -> None:
    answer = api.http.post("/events", content=body,
                           headers={"X-API-Key": api.keys["acme"], "Content-Type": "application/json"})
    assert answer.status_code == 422, why
    assert set(answer.json()) == {"error", "message", "field", "errors"} and answer.json()["field"] in ("body", "data")
    assert nothing_stored(api.client)


def test_data_nested_past_the_limit_or_with_an_integer_beyond_2_53_gets_422_naming_data(api: Api) -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    for data in ({"x": deep}, {"x": 2**53}, {"x": "nul\u0000"}):
        answer = api.post({"name": "add", "key": "k", "data": data, "target": "counter"})
        assert answer.status_code == 422 and answer.json()["field"] == "data", answer.json()
    assert nothing_stored(api.client)


def test_an_unknown_path_and_a_wrong_method_answer_in_garrisons_error_shape(api: Api) -> None:
    missing = api.http.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = api.http.get("/events")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert "POST" in wrong.headers.get("allow", "")
    for answer in (missing, wrong):
        assert set(answer.json()) == {"error", "message", "field", "errors"}
