"""Settings come from GARRISON_* variables, default to no server at all, and refuse what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

import garrison
from garrison.config import Settings
from garrison.errors import ConfigurationError, GarrisonError


def test_the_defaults_need_no_server() -> None:
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///.garrison/garrison.db"
    assert s.broker_url == "filesystem://"
    assert s.tenant == "default"


def test_every_field_is_read_from_its_garrison_variable() -> None:
    s = Settings.from_env({
        "GARRISON_DATABASE_URL": "postgresql://db/x", "GARRISON_BROKER_URL": "redis://r:6379/0",
        "GARRISON_TENANT": "acme", "GARRISON_AUTOMATIONS": "a.b, c.d", "GARRISON_PUBLISH_BATCH": "7",
        "GARRISON_RELAY_AFTER": "2.5", "GARRISON_DATA_DIR": "/tmp/g",
    })
    assert (s.database_url, s.broker_url, s.tenant) == ("postgresql://db/x", "redis://r:6379/0", "acme")
    assert s.automations == ("a.b", "c.d")
    assert (s.publish_batch, s.relay_after, s.data_dir) == (7, 2.5, Path("/tmp/g"))


def test_as_env_round_trips() -> None:
    s = Settings(tenant="t1", automations=("x.y",), max_payload_bytes=1000)
    assert Settings.from_env(s.as_env()) == s


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"GARRISON_PUBLISH_BATCH": "lots"}, "publish_batch"),
        ({"GARRISON_PUBLISH_BATCH": "0"}, "publish_batch"),
        ({"GARRISON_TIMER_HORIZON": "7200", "GARRISON_BROKER_VISIBILITY_TIMEOUT": "3600"}, "timer_horizon"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_its_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert info.value.field == field
    assert isinstance(info.value, GarrisonError)


def test_the_public_api_is_exactly_what_all_lists() -> None:
    exported = {name for name in dir(garrison) if not name.startswith("_")}
    modules = {"automations", "client", "clock", "config", "db", "errors", "ingest", "models", "publisher"}
    assert set(garrison.__all__) == exported - modules - {name for name in exported if name.islower()
                                                          and name not in garrison.__all__}
    for name in garrison.__all__:
        assert getattr(garrison, name) is not None
