"""Time travel: an entity's state at a version or at a moment, from the client and `garrison inspect`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import delete

from garrison.cli import cli
from garrison.client import Garrison
from garrison.clock import FrozenClock
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from garrison.errors import NotFound, ValidationError
from garrison.models import VERSIONS
from tests.harness import child_env


@pytest.fixture
def client(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Garrison]:
    c = Garrison(settings_for(backend), publisher=NullPublisher(), clock=FrozenClock())
    yield c
    c.db.dispose()


def add_three(client: Garrison) -> list[object]:
    """Three versions of counter 'k', an hour apart; returns the times just after each."""
    clock = client.clock
    assert isinstance(clock, FrozenClock)
    times = []
    for n in (1, 2, 3):
        client.ingest("add", "k", {"n": n}, target="counter")
        client.run_pending()
        times.append(clock.now())
        clock.advance(hours=1)
    return times


def test_state_at_a_version_is_that_version_and_version_zero_is_before_the_first(client: Garrison) -> None:
    add_three(client)
    assert [client.state("counter", "k", version=v)["count"] for v in (1, 2, 3)] == [1, 2, 3]
    assert client.state("counter", "k", version=2)["applied"] == [["", 1], ["", 2]]
    assert client.state("counter", "k", version=0) is None
    assert client.state("counter", "k") == client.state("counter", "k", version=3)


def test_state_at_a_moment_is_the_newest_version_stored_by_then(client: Garrison) -> None:
    first, second, third = add_three(client)
    assert client.state("counter", "k", at=second)["count"] == 2
    assert client.state("counter", "k", at=second + timedelta(minutes=59))["count"] == 2
    assert client.state("counter", "k", at=third + timedelta(days=9))["count"] == 3
    assert client.state("counter", "k", at=first - timedelta(seconds=1)) is None   # it had no state yet
    assert client.state("counter", "nobody", at=third) is None


def test_a_version_it_never_had_or_a_bad_point_is_refused(client: Garrison) -> None:
    add_three(client)
    with pytest.raises(NotFound, match="has no version 4 \\(it is at version 3\\)"):
        client.state("counter", "k", version=4)
    for kwargs, field in (({"version": -1}, "version"), ({"version": "2"}, "version"),
                          ({"at": "2024-01-01"}, "at"), ({"version": 1, "at": client.clock.now()}, "at")):
        with pytest.raises(ValidationError) as refused:
            client.state("counter", "k", **kwargs)  # type: ignore[arg-type]
        assert refused.value.field == field


def test_a_version_retention_deleted_is_refused_saying_so_rather_than_answered_wrongly(client: Garrison) -> None:
    first, _, _ = add_three(client)
    with client.db.session() as s:
        s.execute(delete(VERSIONS).where(VERSIONS.c.version == 1))
    with pytest.raises(NotFound, match="deleted by retention \\(the oldest version kept is 2"):
        client.state("counter", "k", version=1)
    with pytest.raises(NotFound, match="deleted by retention"):
        client.state("counter", "k", at=first)
    assert client.state("counter", "k", version=2)["count"] == 2


def test_inspect_with_version_or_at_prints_the_state_each_automation_had_then(client: Garrison) -> None:
    _, second, _ = add_three(client)
    env = child_env(client.settings)

    shown = CliRunner().invoke(cli, ["inspect", "k", "--version", "2"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "counter     2        add" in shown.output and '"count":2' in shown.output

    as_json = CliRunner().invoke(cli, ["inspect", "k", "--at", second.strftime("%Y-%m-%dT%H:%M:%S"), "--json"],
                                 env=env)
    assert as_json.exit_code == 0, as_json.output
    [past] = json.loads(as_json.output)
    assert (past["automation"], past["version"], past["state"]["count"], past["seq"]) == ("counter", 2, 2, 2)

    missing = CliRunner().invoke(cli, ["inspect", "k", "--version", "9"], env=env)
    assert missing.exit_code == 1 and "has no version 9" in missing.output
