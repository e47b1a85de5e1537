"""Setup mistakes get one line that says what to do, never a traceback: tables not created yet, a database
that does not exist, a server that cannot be reached; and a ``postgres://`` URL (Heroku's spelling) works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from garrison.cli import cli
from garrison.config import Settings
from tests.conftest import PG_URL, require_services

UPGRADE = "garrison's tables are not in "


def run(settings: Settings, *args: str) -> tuple[int, str, str]:
    result = CliRunner(env=settings.as_env()).invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", [["inspect", "order-1"], ["stats"], ["ingest", "placed", "order-1"],
                                     ["runs"], ["worker", "-P", "solo"], ["beat"]])
def test_a_command_before_db_upgrade_says_to_run_it_in_one_line(
    backend: str, settings_for: Callable[..., Settings], command: list[str]
) -> None:
    settings = settings_for(backend)
    from garrison.client import Garrison

    bare = Garrison(settings)
    bare.db.drop_all()
    bare.db.dispose()
    code, _, err = run(settings, *command)
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {UPGRADE}") and line.endswith("run `garrison db upgrade` (on every deploy, "
                                                                   "before the workers start)")
    code, out, _ = run(settings, "db", "upgrade")
    assert code == 0 and "upgraded garrison tables" in out


def test_a_database_that_does_not_exist_is_named_with_how_to_create_it(tmp_path: Path) -> None:
    require_services()
    missing = make_url(PG_URL).set(database="garrison_no_such_db").render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path, database_url=missing)
    for command in (["stats"], ["db", "upgrade"], ["worker"]):
        code, _, err = run(settings, *command)
        assert code != 0 and "Traceback" not in err
        [line] = err.strip().splitlines()
        assert "the database 'garrison_no_such_db' does not exist" in line and "`createdb garrison_no_such_db`" in line


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://garrison:secret@127.0.0.1:9/garrison")
    code, _, err = run(settings, "inspect", "k")
    [line] = err.strip().splitlines()
    assert code == 2 and line.startswith("error: cannot reach the database at postgresql://garrison:***@127.0.0.1:9")
    assert "secret" not in err


def test_a_postgres_url_is_accepted_as_postgresql(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for("postgres")
    heroku = "postgres://" + settings.database_url.split("://", 1)[1]
    assert Settings(database_url=heroku).database_url == settings.database_url
    same = settings.with_overrides(database_url=heroku)
    code, _, err = run(same, "db", "upgrade")
    assert code == 0, err
    stats = CliRunner(env={**settings.as_env(), "GARRISON_DATABASE_URL": heroku}).invoke(cli, ["stats", "--json"])
    assert stats.exit_code == 0, stats.stderr
