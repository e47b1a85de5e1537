"""Migrations: `garrison db upgrade` builds exactly the models' schema on PostgreSQL and SQLite, keeps every
row when it upgrades, does nothing the second time, adopts a database made by `create_all` before
migrations existed, refuses a revision it does not know, is safe when two deploys run it at once, and the
developers' `python -m garrison.ops.migrate revision` writes a working next migration. An installed copy of
the package (not the source tree) carries its migrations."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner, Result
from sqlalchemy import Connection, MetaData, Table, select, text
from sqlalchemy.types import JSON

from garrison.cli import cli
from garrison.client import Garrison
from garrison.config import Settings
from garrison.core.db import Database
from garrison.core.publisher import NullPublisher
from garrison.models import EVENTS, STREAMS, metadata
from garrison.ops import migrate
from tests.conftest import make_settings
from tests.harness import ROOT

HEAD = migrate.head()
TENANT = "migrated"


@pytest.fixture
def empty(backend: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings for a database with no garrison table and no recorded revision."""
    settings = make_settings(backend, tmp_path)
    _wipe(settings)
    yield settings
    _wipe(settings)


def _wipe(settings: Settings) -> None:
    db = Database(settings)
    try:
        with db.engine.begin() as conn:
            found = MetaData()
            found.reflect(conn, only=lambda name, _: name.startswith("garrison_"))
            found.drop_all(conn)
    finally:
        db.dispose()


def run(settings: Settings, *args: str) -> Result:
    return CliRunner(env=settings.as_env()).invoke(cli, list(args), catch_exceptions=False)


def _lines(sql: str) -> tuple[str, ...]:
    return tuple(sorted(line.strip().rstrip(",") for line in sql.splitlines()))


def _schema(settings: Settings) -> Any:
    """Every column, index and constraint of garrison's tables as the database itself describes them."""
    db = Database(settings)
    try:
        with db.engine.connect() as conn:
            if db.is_sqlite:
                rows = conn.execute(text(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name LIKE 'garrison%' "
                    "AND tbl_name <> 'garrison_alembic_version' ORDER BY name"
                )).all()
                # A table a migration rebuilt reads with its name quoted and its constraints in another order:
                # the same schema, spelled apart. Compare each table's definition line by line, as a set.
                return [(t, n, tbl, None if sql is None else _lines(sql.replace(f'"{tbl}"', tbl)))
                        for t, n, tbl, sql in rows]
            ours = "LIKE 'garrison%' AND {0} <> 'garrison_alembic_version'"
            return (
                conn.execute(text(
                    "SELECT table_name, column_name, ordinal_position, data_type, character_maximum_length, "
                    "is_nullable, column_default FROM information_schema.columns WHERE table_schema = "
                    f"current_schema() AND table_name {ours.format('table_name')} ORDER BY 1, 3"
                )).all(),
                conn.execute(text(
                    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                    f"AND tablename {ours.format('tablename')} ORDER BY 2"
                )).all(),
                conn.execute(text(
                    "SELECT cl.relname, co.conname, co.contype, pg_get_constraintdef(co.oid) FROM pg_constraint co "
                    "JOIN pg_class cl ON cl.oid = co.conrelid WHERE cl.relnamespace = current_schema()::regnamespace "
                    f"AND cl.relname {ours.format('cl.relname')} ORDER BY 2"
                )).all(),
            )
    finally:
        db.dispose()


def _execute(settings: Settings, *statements: str) -> None:
    db = Database(settings)
    try:
        with db.engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        db.dispose()


# -- the schema ---------------------------------------------------------------------------------------


def test_upgrade_builds_exactly_the_schema_create_all_builds_from_the_models(empty: Settings) -> None:
    db = Database(empty)
    db.create_all()
    from_models = _schema(empty)
    db.drop_all()
    db.dispose()

    done = migrate.upgrade(empty)

    assert (done.before, done.after, done.adopted) == (None, HEAD, False)
    assert migrate.check(empty) == []
    assert _schema(empty) == from_models  # down to each column's type, default and every index's DDL
    assert from_models  # not two empty descriptions


def test_check_names_each_difference_between_the_database_and_the_models(empty: Settings) -> None:
    migrate.upgrade(empty)
    statements = [
        "DROP INDEX ix_garrison_timers_due",
        "ALTER TABLE garrison_leases ADD COLUMN stray INTEGER",
        "DROP TABLE garrison_cursors",
    ]
    if empty.database_url.startswith("postgresql"):
        statements += [
            "ALTER TABLE garrison_events ALTER COLUMN data TYPE json",
            "ALTER TABLE garrison_runs ALTER COLUMN key DROP NOT NULL",
            "ALTER TABLE garrison_schedules DROP CONSTRAINT uq_garrison_schedules_name",
        ]
    _execute(empty, *statements)

    differences = migrate.check(empty)

    expected = [
        "Index ix_garrison_timers_due on garrison_timers is missing from the database",
        "column garrison_leases.stray is not in the models",
        "table garrison_cursors is missing from the database",
    ]
    if empty.database_url.startswith("postgresql"):
        expected += [
            "column garrison_events.data: type is JSON in the database, JSONB in the models",
            "column garrison_runs.key: nullable is True in the database, False in the models",
            "UniqueConstraint uq_garrison_schedules_name on garrison_schedules is missing from the database",
        ]
    assert sorted(differences) == sorted(expected)
    checked = run(empty, "db", "check")
    assert checked.exit_code == 1
    assert "error: garrison's tables differ from its models:" in checked.stderr
    assert "table garrison_cursors is missing from the database" in checked.stderr


# -- upgrading ----------------------------------------------------------------------------------------


def test_db_upgrade_twice_changes_nothing_the_second_time(empty: Settings) -> None:
    first = run(empty, "db", "upgrade")
    assert first.exit_code == 0, first.output
    assert f": empty -> {HEAD}" in first.stdout
    schema = _schema(empty)

    second = run(empty, "db", "upgrade")

    assert second.exit_code == 0, second.output
    assert f"already at revision {HEAD}; nothing to do" in second.stdout
    assert _schema(empty) == schema
    db = Database(empty)
    with db.engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).all() == [(HEAD,)]
    db.dispose()
    current = run(empty, "db", "current")
    assert current.stdout.strip() == f"database at {HEAD}; latest {HEAD} (up to date)"
    assert run(empty, "db", "check").stdout.strip() == "garrison tables match the models"


def test_db_init_on_an_empty_database_upgrades_it_to_the_latest_revision(empty: Settings) -> None:
    before = run(empty, "db", "current").stdout.strip()
    assert before == f"database at no revision; latest {HEAD} (run `garrison db upgrade`)"

    result = run(empty, "db", "init")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"(revision {HEAD})")
    assert migrate.current(empty) == HEAD
    assert migrate.check(empty) == []


def _sample(table: Table, i: int) -> dict[str, Any]:
    """Row ``i`` of a table, from its reflected columns only (so it fits the table at any revision)."""
    row: dict[str, Any] = {}
    for column in table.columns:
        kind = JSON if isinstance(column.type, JSON) else column.type.python_type
        if column.name == "tenant":
            row[column.name] = TENANT
        elif kind is JSON or kind is dict:
            row[column.name] = {"n": i, "list": [1, "two", None]}
        elif kind is bool:
            row[column.name] = i % 2 == 0
        elif kind is int:
            row[column.name] = i
        elif kind is float:
            row[column.name] = i + 0.5
        elif kind is datetime:
            row[column.name] = datetime(2026, 1, i, 12, 30, tzinfo=UTC)
        elif kind is str:
            row[column.name] = f"{column.name}-{i}"[: getattr(column.type, "length", None) or 255]
        else:  # pragma: no cover - a column type this test does not know yet: teach it
            raise AssertionError(f"no sample value for {table.name}.{column.name} ({column.type})")
    return row


def _reflect(conn: Connection) -> dict[str, Table]:
    found = MetaData()
    found.reflect(conn, only=lambda name, _: migrate.include_name(name, "table", {}))
    return dict(found.tables)


def _rows(conn: Connection, tables: dict[str, Table], columns: dict[str, list[str]]) -> dict[str, list[Any]]:
    out = {}
    for name, names in columns.items():
        table = tables[name]
        selected = [table.c[c] for c in names]
        out[name] = [tuple(r) for r in conn.execute(
            select(*selected).where(table.c.tenant == TENANT).order_by(*selected)
        )]
    return out


def test_rows_in_every_table_survive_the_upgrade_from_the_baseline_to_head(empty: Settings) -> None:
    migrate.upgrade(empty, migrate.BASELINE)
    db = Database(empty)
    with db.engine.begin() as conn:
        tables = _reflect(conn)
        baseline = migrate._script().get_revision(migrate.BASELINE)
        assert baseline is not None
        assert set(tables) == set(baseline.module.TABLES)
        for table in tables.values():
            conn.execute(table.insert(), [_sample(table, 1), _sample(table, 2)])
        columns = {name: [c.name for c in table.columns] for name, table in tables.items()}
        before = _rows(conn, tables, columns)
    assert all(len(rows) == 2 for rows in before.values()), before

    done = migrate.upgrade(empty)

    assert (done.before, done.after) == (migrate.BASELINE, HEAD)
    with db.engine.connect() as conn:
        assert _rows(conn, _reflect(conn), columns) == before
    db.dispose()
    assert migrate.check(empty) == []


def test_a_database_made_by_create_all_is_adopted_with_its_data(empty: Settings) -> None:
    client = Garrison(empty, publisher=NullPublisher())
    client.init_db()  # the path before migrations: create_all, no recorded revision
    client.ingest("add", "k1", {"n": 1}, target="counter")
    assert client.run_pending() == 1
    state = client.state("counter", "k1")
    client.db.dispose()

    result = run(empty, "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert f"adopted tables made before migrations in {_printed(empty)} at revision {migrate.BASELINE}" in result.stdout
    assert migrate.current(empty) == HEAD
    assert migrate.check(empty) == []
    again = Garrison(empty, publisher=NullPublisher())
    assert again.state("counter", "k1") == state == {"count": 1, "applied": [["", 1]]}
    again.db.dispose()
    assert "nothing to do" in run(empty, "db", "upgrade").stdout


def _printed(settings: Settings) -> str:
    return settings.database_url  # the test URLs carry no password


def test_a_create_all_database_missing_newer_tables_gets_them_when_adopted(empty: Settings) -> None:
    db = Database(empty)
    metadata.create_all(db.engine, tables=[EVENTS, STREAMS])  # e.g. made before the pulse tables existed
    with db.engine.begin() as conn:
        conn.execute(STREAMS.insert().values(tenant=TENANT, key="k", last_seq=7, updated_at=datetime.now(UTC)))
    db.dispose()

    done = migrate.upgrade(empty)

    assert (done.before, done.after, done.adopted) == (None, HEAD, True)
    assert migrate.check(empty) == []
    db = Database(empty)
    with db.engine.connect() as conn:
        assert conn.execute(select(STREAMS.c.last_seq).where(STREAMS.c.tenant == TENANT)).scalar_one() == 7
    db.dispose()


def test_a_revision_newer_than_this_garrison_is_refused_naming_it(empty: Settings) -> None:
    migrate.upgrade(empty)
    _execute(empty, f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'")

    with pytest.raises(migrate.MigrationError) as caught:
        migrate.upgrade(empty)

    assert caught.value.context["revision"] == "9999"
    assert "newer garrison" in str(caught.value)
    result = run(empty, "db", "upgrade")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the database is at revision 9999, which this garrison does not know")


def test_two_upgrades_at_once_both_succeed_and_build_one_schema(empty: Settings) -> None:
    barrier = threading.Barrier(2)
    results: list[migrate.Upgrade] = []
    errors: list[BaseException] = []

    def deploy() -> None:
        barrier.wait()
        try:
            results.append(migrate.upgrade(empty))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deploy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert sorted((r.before or "", r.after) for r in results) == [("", HEAD), (HEAD, HEAD)]
    assert migrate.check(empty) == []


def test_downgrade_to_base_drops_every_table_and_upgrade_rebuilds_them(empty: Settings) -> None:
    migrate.upgrade(empty)

    done = migrate.downgrade(empty, "base")

    assert (done.before, done.after) == (HEAD, None)
    db = Database(empty)
    with db.engine.connect() as conn:
        assert _reflect(conn) == {}
    db.dispose()
    migrate.upgrade(empty)
    assert migrate.check(empty) == []


def test_a_database_that_cannot_be_reached_is_one_line_naming_it_without_its_password(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://garrison:s3cret@127.0.0.1:9/garrison")

    result = run(settings, "db", "upgrade")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the database postgresql://garrison:***@127.0.0.1:9/garrison: ")
    assert "s3cret" not in result.output


# -- writing the next migration ----------------------------------------------------------------------


def test_revision_writes_the_next_migration_from_what_the_models_have_and_the_database_lacks(
    empty: Settings, tmp_path: Path
) -> None:
    migrate.upgrade(empty)
    _execute(empty, "DROP TABLE garrison_runs")  # as if the models had gained this table
    versions = tmp_path / "versions"
    versions.mkdir()

    path = migrate.revision(empty, "add runs", directory=versions)

    assert path.parent == versions and path.name == f"{int(HEAD) + 1:04d}_add_runs.py"
    spec = importlib.util.spec_from_file_location("next_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (module.revision, module.down_revision) == (f"{int(HEAD) + 1:04d}", HEAD)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", str(path)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    db = Database(empty)
    with db.engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.upgrade()
    db.dispose()
    assert migrate.check(empty) == []  # the generated migration restores exactly the models' table


def test_revision_refuses_a_database_that_is_not_at_head(empty: Settings, tmp_path: Path) -> None:
    with pytest.raises(migrate.MigrationError, match=r"run `garrison db upgrade` first"):
        migrate.revision(empty, "too early", directory=tmp_path)
    assert list(tmp_path.glob("*.py")) == []


# -- packaging ----------------------------------------------------------------------------------------


def test_an_installed_copy_of_the_package_carries_and_runs_its_migrations(tmp_path: Path) -> None:
    source, lib = tmp_path / "src", tmp_path / "lib"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "garrison", source / "garrison", ignore=shutil.ignore_patterns("__pycache__"))
    # What setuptools installs: the packages plus their package data (the same step a wheel build runs).
    build = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "--build-lib", str(lib)],
        cwd=source, capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    shipped = {p.relative_to(lib / "garrison").as_posix() for p in (lib / "garrison").rglob("*")}
    wanted = {"migrations/env.py", "migrations/versions/0001_initial.py", "migrations/script.py.mako"}
    assert wanted <= shipped, "add the migrations' files to [tool.setuptools.package-data] in pyproject.toml"

    database = tmp_path / "installed.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env.update(PYTHONPATH=str(lib), GARRISON_DATABASE_URL=f"sqlite:///{database}")
    code = ("import sys, garrison; print(garrison.__file__); from garrison.cli import main; "
            "sys.argv[1:] = ['db', 'upgrade']; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(lib / "garrison" / "__init__.py")
    assert f"empty -> {HEAD}" in result.stdout
    assert migrate.current(Settings(database_url=f"sqlite:///{database}")) == HEAD

