"""garrison installed exactly as the README and the Dockerfile tell users: a fresh virtualenv, ``pip install
.`` then ``pip install '.[http]'`` (no test extra, no constraints file: whatever the declared ranges resolve
to), then on PostgreSQL + Redis: ``garrison db upgrade``, a real ``garrison worker`` and ``garrison beat``, an
ingest, the state applied.

The suite's own venv hides what a plain install lacks (the test extra pulls in ``packaging``, which kombu's
Redis transport imports: a plain install had workers, beat and every publish fail with
``ModuleNotFoundError``). The venv is built once per dependency set (a hash of pyproject.toml's
dependencies and constraints.txt) under ~/.cache/garrison-smoke and reused; garrison itself is
reinstalled from this tree every run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from garrison import Garrison, NullPublisher, Settings
from tests.conftest import PG_URL, REDIS_URL, require_services
from tests.harness import ROOT, ensure_database, wait_until

SMOKE_APP = '''
from garrison.automations.machine import Machine

smoke = Machine("smoke")


@smoke.reducer
def add(prefs, state, data):
    state = state or {"total": 0}
    state["total"] += data["n"]
    return state
'''


def dependency_hash() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    deps = text[text.index("dependencies = ["):text.index("test = [")]
    constraints = (ROOT / "constraints.txt").read_text()
    return hashlib.sha256((deps + constraints + sys.version).encode()).hexdigest()[:16]


def source_copy(into: Path) -> Path:
    """The files the Dockerfile copies (pyproject.toml, README.md, garrison/): a build never writes into
    the work tree."""
    into.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, into / name)
    shutil.copytree(ROOT / "garrison", into / "garrison", ignore=shutil.ignore_patterns("__pycache__"))
    return into


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args], check=True,
                   env={k: v for k, v in os.environ.items() if not k.startswith("PIP_CONSTRAINT")})


def user_venv(tmp_path: Path) -> Path:
    """A virtualenv with garrison installed as a user installs it (cached per dependency set)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "garrison-smoke"
    venv = cache / dependency_hash()
    source = source_copy(tmp_path / "src")
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip(venv, str(source))
        pip(venv, f"{source}[http]")
        (venv / ".complete").touch()
    else:  # same dependencies: only garrison itself is new
        pip(venv, "--no-deps", "--force-reinstall", f"{source}[http]")
    return venv


def run(venv: Path, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "garrison"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # building the venv the first time: minutes on a loaded machine
def test_a_plain_install_runs_migrations_a_worker_and_beat_on_postgresql_and_redis(tmp_path: Path) -> None:
    require_services()
    venv = user_venv(tmp_path)
    smoke_db = make_url(PG_URL).set(database=f"{make_url(PG_URL).database}_smoke")
    url = smoke_db.render_as_string(hide_password=False)
    ensure_database(url)
    app = tmp_path / "app"
    app.mkdir()
    (app / "smoke_app.py").write_text(SMOKE_APP)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, broker_url=REDIS_URL,
                        automations=("smoke_app",), relay_interval=0.5, relay_after=1.0)
    client = Garrison(settings, publisher=NullPublisher())
    client.db.drop_all()  # an empty database: `garrison db upgrade` makes every table
    with client.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GARRISON_", "PYTHON"))}
    env.update(settings.as_env(), PYTHONPATH=str(app))
    upgraded = run(venv, env, app, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    procs: list[tuple[subprocess.Popen[Any], Path]] = []
    try:
        for command in (["worker", "-c", "1"], ["beat"]):
            log = tmp_path / f"{command[0]}.log"
            procs.append((subprocess.Popen([str(venv / "bin" / "garrison"), *command], env=env, cwd=app,
                                           stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True),
                          log))
        ingested = run(venv, env, app, "ingest", "--target", "smoke", "add", "k", '{"n": 2}')
        assert ingested.returncode == 0, ingested.stderr
        def applied() -> bool:
            for proc, log in procs:  # a process that exited fails at once, with its log
                assert proc.poll() is None, f"{log.name} exited:\n{log.read_text(errors='replace')}"
            return bool(client.state("smoke", "k") == {"total": 2})

        wait_until(applied, timeout=60, what="the worker to apply the event")
        for proc, log in procs:
            assert proc.poll() is None, log.read_text(errors="replace")
        for _, log in procs:
            assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(10)
        client.db.dispose()
