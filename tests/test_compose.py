"""docker-compose.yml and the Dockerfile, checked against the code they run (no Docker daemon needed).

Every service's command is parsed by the real CLI (garrison's click commands; Celery's and Flower's own
option parsers), so an option that does not exist fails here instead of in production. The stack's
secrets come from the environment only. The runtime checks start the services' exact commands, with the
compose file's environment, against PostgreSQL and Redis (what the stack runs on): Flower refuses a
request without the basic auth, the ingest server turns healthy once `garrison db upgrade` ran, and
beat's healthcheck passes while its beat holds the lease and fails once it died.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import yaml

from garrison.cli import cli
from garrison.config import Settings
from garrison.ops import migrate
from tests.conftest import make_settings
from tests.harness import ROOT, wait_until
from tests.test_migrations import _wipe

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret-1",
    "FLOWER_BASIC_AUTH": "admin:flower-secret-2",
    "GARRISON_API_KEYS": "acme:api-secret-3-0123456789abcdef",
}
# Not secret, but required: a worker, beat or ingest server without automations refuses to start.
REQUIRED = {"GARRISON_AUTOMATIONS": "tests.apps.counter"}
SERVICES = {"postgres", "redis", "migrate", "worker", "beat", "flower", "ingest"}
LONG_RUNNING = SERVICES - {"migrate"}


# -- reading the files as compose does ------------------------------------------------------------------


class MissingVariable(Exception):
    pass


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<name>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.S)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``."""

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["name"]:
            return env.get(m["name"], "")
        braced = _BRACED.fullmatch(m["braced"])
        assert braced is not None, f"compose cannot read ${{{m['braced']}}}"
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        found = env.get(name)
        if op in (":?", "?") and (found is None or (op == ":?" and not found)):
            raise MissingVariable(f"{name}: {arg}")
        if op == ":-" and not found:
            return str(arg)
        if op == "-" and found is None:
            return str(arg)
        return found or ""

    return _VARIABLE.sub(substitute, value)


def _walk(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_walk(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, env) for k, v in value.items()}
    return value


def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def load(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file with its variables substituted (by default: every secret and required value set)."""
    return dict(_walk(raw(), {**SECRETS, **REQUIRED} if env is None else env))


def services() -> dict[str, dict[str, Any]]:
    return dict(load()["services"])


def argv(command: Any) -> list[str]:
    """A command or healthcheck test as the argument list Docker runs."""
    if isinstance(command, str):
        return shlex.split(command)
    if command[0] == "CMD":
        return list(command[1:])
    if command[0] == "CMD-SHELL":
        return shlex.split(command[1])
    return list(command)


def built() -> dict[str, dict[str, Any]]:
    """The services that run garrison's image."""
    return {name: s for name, s in services().items() if "build" in s}


# -- checking a command line against the CLI that runs it ---------------------------------------------


def parse_garrison(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """Parse ``garrison ARGS`` with the real click commands, running none of them: every command's callback
    is replaced by one that records its parameters. Unknown commands or options raise click's errors."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def patch(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                patch(sub, f"{path} {name}".strip())
        else:
            monkeypatch.setattr(command, "callback", lambda **params: seen.append((path, params)))

    patch(cli, "")
    cli.main(args, prog_name="garrison", standalone_mode=False)
    monkeypatch.undo()
    assert len(seen) == 1, f"garrison {' '.join(args)} ran no command"
    return seen[0]


def celery_env(service: Mapping[str, Any], tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GARRISON_", "FLOWER_"))}
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    env["GARRISON_DATA_DIR"] = str(tmp_path)
    return env


def check_celery(*commands: tuple[list[str], Mapping[str, Any]], tmp_path: Path) -> None:
    """``celery ARGS --help`` exits 0 with the service's environment: the app named by ``-A`` imports and
    every option parses (Celery's click commands refuse unknown ones). Flower passes its own options on to
    tornado and silently drops the ones it does not know, so those are checked one by one. The commands
    run side by side."""
    running = []
    for args, service in commands:
        assert args[0] == "celery"
        if "flower" in args:
            from flower.command import is_flower_option

            for option in args[args.index("flower") + 1 :]:
                assert option.startswith("--") and "=" in option, f"flower reads only --name=value, not {option!r}"
                assert is_flower_option(option), f"flower has no option {option!r}"
        running.append((args, subprocess.Popen(
            [sys.executable, "-m", "celery", *args[1:], "--help"], cwd=tmp_path, env=celery_env(service, tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )))
    for args, proc in running:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{shlex.join(args)}:\n{err}"
        assert out.startswith("Usage:")


# -- the stack -----------------------------------------------------------------------------------------------


def test_the_stack_runs_every_part_of_garrison_from_one_image() -> None:
    found = services()
    assert set(found) == SERVICES
    assert set(built()) == {"migrate", "worker", "beat", "flower", "ingest"}
    images = {(json.dumps(s["build"]), s["image"]) for s in built().values()}
    assert images == {('"."', "garrison:latest")}
    assert all(s.get("init") is True for s in built().values())  # signals and zombies handled by tini
    commands = {name: argv(s["command"])[:3] for name, s in built().items()}
    assert commands == {
        "migrate": ["garrison", "db", "upgrade"],
        "worker": ["garrison", "worker", "--concurrency"],
        "beat": ["garrison", "beat"],
        "flower": ["celery", "-A", "garrison.tasks"],
        "ingest": ["garrison", "serve", "--host"],
    }


def test_every_garrison_command_parses_against_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parsed = {}
    for name, service in built().items():
        args = argv(service["command"])
        if args[0] == "garrison":
            parsed[name] = parse_garrison(args[1:], monkeypatch)
            extra = parsed[name][1].get("celery_args")
            if extra:  # `garrison worker` hands unknown options to Celery: they must exist there
                check_celery((["celery", "-A", "garrison.tasks", parsed[name][0], *extra], service), tmp_path=tmp_path)

    assert parsed["migrate"] == ("db upgrade", {"revision": "head"})
    assert parsed["worker"][0] == "worker" and parsed["worker"][1]["concurrency"] == 4
    assert parsed["beat"][0] == "beat"
    assert parsed["ingest"] == ("serve", {"host": "0.0.0.0", "port": 8000, "log_level": None})


def test_an_option_the_cli_does_not_have_fails_the_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(click.UsageError):
        parse_garrison(["serve", "--hots", "0.0.0.0"], monkeypatch)
    with pytest.raises(click.UsageError):
        parse_garrison(["db", "upgarde"], monkeypatch)


def test_every_celery_command_and_healthcheck_runs_against_the_app(tmp_path: Path) -> None:
    commands = {}
    for name, service in built().items():
        for args in (argv(service["command"]), argv(service.get("healthcheck", {}).get("test", ["CMD", "-"]))):
            if args[0] == "celery":
                commands[(name, args[3])] = (args, service)
    assert sorted(commands) == [("flower", "flower"), ("worker", "inspect")]
    check_celery(*commands.values(), tmp_path=tmp_path)


def test_an_option_celery_or_flower_does_not_know_is_caught(tmp_path: Path) -> None:
    flower, worker = built()["flower"], built()["worker"]
    with pytest.raises(AssertionError, match="No such option '--destinaton'"):
        check_celery((["celery", "-A", "garrison.tasks", "inspect", "ping", "--destinaton", "x"], worker),
                     tmp_path=tmp_path)
    with pytest.raises(AssertionError, match="flower has no option '--basic-atuh=x'"):
        check_celery((["celery", "-A", "garrison.tasks", "flower", "--basic-atuh=x"], flower), tmp_path=tmp_path)
    with pytest.raises(AssertionError, match="flower reads only --name=value"):
        check_celery((["celery", "-A", "garrison.tasks", "flower", "--port", "5555"], flower), tmp_path=tmp_path)


def test_the_worker_healthcheck_pings_this_containers_worker_by_its_default_name() -> None:
    worker = built()["worker"]
    test = worker["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"  # the shell expands $HOSTNAME, the container's name
    args = argv(test)
    assert args[args.index("--destination") + 1] == "celery@$HOSTNAME"  # Celery's default node name
    assert worker["stop_grace_period"]


def test_every_python_healthcheck_compiles() -> None:
    codes = {name: argv(s["healthcheck"]["test"]) for name, s in built().items() if "healthcheck" in s}
    python = {name: args[2] for name, args in codes.items() if args[:2] == ["python", "-c"]}
    assert set(python) == {"beat", "flower", "ingest"}
    for name, code in python.items():
        compile(code, f"{name} healthcheck", "exec")


# -- healthchecks, dependencies, volumes --------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck_and_the_databases_use_their_own_probes() -> None:
    found = services()
    for name in LONG_RUNNING:
        check = found[name]["healthcheck"]
        assert check["interval"] and check["timeout"] and check["retries"] >= 3, name
    assert argv(found["postgres"]["healthcheck"]["test"])[0] == "pg_isready"
    assert argv(found["redis"]["healthcheck"]["test"]) == ["redis-cli", "ping"]
    assert "healthcheck" not in found["migrate"]
    assert found["migrate"]["restart"] == "no"  # one shot: a restart loop would hide a failed migration
    assert all(found[name]["restart"] == "unless-stopped" for name in LONG_RUNNING)


def test_nothing_touches_sql_before_the_migration_succeeded() -> None:
    found = services()
    healthy, migrated = {"condition": "service_healthy"}, {"condition": "service_completed_successfully"}
    for name in ("worker", "beat", "ingest"):
        assert found[name]["depends_on"] == {"postgres": healthy, "redis": healthy, "migrate": migrated}, name
    assert found["migrate"]["depends_on"] == {"postgres": healthy}
    assert found["flower"]["depends_on"] == {"redis": healthy}
    for name, service in found.items():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in found[dependency], f"{name} waits for {dependency}, which has no healthcheck"


def test_postgres_and_redis_keep_their_data_in_named_volumes() -> None:
    data = load()
    found = data["services"]
    assert "postgres-data:/var/lib/postgresql/data" in found["postgres"]["volumes"]
    assert "redis-data:/data" in found["redis"]["volumes"]
    assert argv(found["redis"]["command"]) == ["redis-server", "--appendonly", "yes"]
    assert set(data["volumes"]) == {"postgres-data", "redis-data"}
    published = {name: s.get("ports", []) for name, s in found.items()}
    assert published == {"postgres": [], "redis": [], "migrate": [], "worker": [], "beat": [],
                         "flower": ["127.0.0.1:5555:5555"], "ingest": ["8000:8000"]}


# -- settings and secrets -----------------------------------------------------------------------------------


def test_every_garrison_variable_is_a_setting_and_the_urls_point_at_the_stack() -> None:
    names = {f.name for f in fields(Settings)} - {"extra"}
    postgres = services()["postgres"]["environment"]
    for name, service in built().items():
        env = {k: str(v) for k, v in service["environment"].items()}
        garrison = {k: v for k, v in env.items() if k.startswith("GARRISON_")}
        unknown = {k for k in garrison if k[len("GARRISON_") :].lower() not in names}
        assert not unknown, f"{name}: {unknown} are not settings (typos end up in Settings.extra)"
        settings = Settings.from_env(garrison)
        assert settings.database_url == (
            f"postgresql://{postgres['POSTGRES_USER']}:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/"
            f"{postgres['POSTGRES_DB']}"
        ), name
        assert settings.broker_url == "redis://redis:6379/0", name
    assert built()["ingest"]["environment"]["GARRISON_API_KEYS"] == SECRETS["GARRISON_API_KEYS"]
    assert built()["flower"]["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]


@pytest.mark.parametrize("secret", sorted({**SECRETS, **REQUIRED}))
def test_compose_refuses_to_start_without_each_secret(secret: str) -> None:
    env = {k: v for k, v in {**SECRETS, **REQUIRED}.items() if k != secret}
    with pytest.raises(MissingVariable, match=f"^{secret}: set {secret}"):
        load(env)
    with pytest.raises(MissingVariable):
        load({**env, secret: ""})


def test_no_secret_is_written_in_the_file() -> None:
    text = COMPOSE.read_text()
    for secret in SECRETS:  # each secret is required from the environment, never given a default
        uses = re.findall(r"\$\{" + secret + r"(:?[-?]?)", text)
        assert uses and set(uses) == {":?"}, (secret, uses)
    secretive = re.compile(r"PASSWORD|SECRET|AUTH|TOKEN|API_KEYS", re.I)
    for name, service in raw()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretive.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{name}: {key} is not from the environment"
        for key, value in (service.get("environment") or {}).items():
            for userinfo in re.findall(r"://([^@/\s]+)@", str(value)):
                password = userinfo.partition(":")[2]
                assert password.startswith("${") and ":?" in password, f"{name}: {key} has a password in the file"


def test_flower_reads_its_basic_auth_from_an_environment_variable_it_knows() -> None:
    from flower.command import is_flower_envvar

    flower = raw()["services"]["flower"]
    flower_vars = [k for k in flower["environment"] if k.startswith("FLOWER_")]
    assert flower_vars == ["FLOWER_BASIC_AUTH"]
    assert all(is_flower_envvar(k) for k in flower_vars)


# -- the Dockerfile ---------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    lines = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    out = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_garrison_image_names_the_users_own_image_built_from_garrisons_for_every_garrison_service() -> None:
    # A user's image built FROM garrison:latest keeps its own tag: compose runs it instead of garrison's.
    loaded = load({**SECRETS, **REQUIRED, "GARRISON_IMAGE": "myapp-garrison:1.0"})
    mine = {name: s for name, s in loaded["services"].items() if "build" in s}
    assert {s["image"] for s in mine.values()} == {"myapp-garrison:1.0"} and set(mine) == set(built())


def test_the_image_is_python_311_slim_and_runs_as_a_user_that_is_not_root() -> None:
    steps = _instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [arg for word, arg in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    last_run = max(i for i, (word, _) in enumerate(steps) if word == "RUN")
    assert [i for i, (word, _) in enumerate(steps) if word == "USER"][-1] > last_run


def test_the_image_installs_the_extras_its_services_need(monkeypatch: pytest.MonkeyPatch) -> None:
    installs = [arg for word, arg in _instructions() if word == "RUN" and "pip install" in arg]
    assert len(installs) == 1
    extras = set(re.findall(r"\[([a-z,]+)\]", installs[0])[0].split(","))
    needed = {"http"} if any(argv(s["command"])[:2] == ["garrison", "serve"] for s in built().values()) else set()
    assert needed <= extras
    assert "-e " not in installs[0]  # an installed package: the migrations must ship inside it


def test_the_images_default_command_is_a_garrison_command(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = dict(_instructions())
    assert "ENTRYPOINT" not in steps  # compose's commands name their program (garrison or celery)
    cmd = json.loads(steps["CMD"])
    assert cmd[0] == "garrison"
    assert parse_garrison(cmd[1:], monkeypatch)[0] == "worker"


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_local() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = [arg.split()[:-1] for word, arg in _instructions() if word == "COPY"]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _ignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"
    assert not _ignored("garrison/migrations/versions/0001_initial.py", patterns)
    assert not _ignored("garrison/migrations/script.py.mako", patterns)
    for local in (".venv/bin/python", ".git/HEAD", ".garrison/garrison.db", "tests/test_compose.py",
                  "garrison/__pycache__/db.cpython-311.pyc", "benchmarks/run.py"):
        assert _ignored(local, patterns), local


# -- the services, run ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _program(args: list[str]) -> list[str]:
    """The image's ``garrison``, ``celery`` and ``python`` executables, run by this interpreter."""
    if args[0] == "python":
        return [sys.executable, *args[1:]]
    return [sys.executable, "-m", {"garrison": "garrison.cli", "celery": "celery"}[args[0]], *args[1:]]


def _env_for(service: Mapping[str, Any], settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The service's environment from the compose file, pointed at the test's PostgreSQL and Redis."""
    env = celery_env(service, tmp_path)
    env.update(GARRISON_DATABASE_URL=settings.database_url, GARRISON_BROKER_URL=settings.broker_url,
               PYTHONPATH=str(ROOT), **extra)
    return env


def _healthy(service: Mapping[str, Any], env: dict[str, str], port: tuple[str, int] | None = None) -> bool:
    """Run the service's healthcheck as Docker would (with the port moved when the test had to)."""
    args = argv(service["healthcheck"]["test"])
    if port is not None:
        args = [a.replace(f":{port[0]}/", f":{port[1]}/") for a in args]
    return subprocess.run(_program(args), env=env, capture_output=True, timeout=60).returncode == 0


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(_program(args), env=env, cwd=log.parent, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def stack(tmp_path: Path) -> Settings:
    """PostgreSQL and Redis, the stack's own backends, with no garrison table yet."""
    settings = make_settings("postgres", tmp_path)
    _wipe(settings)
    import redis

    redis.Redis.from_url(settings.broker_url).flushdb()
    return settings


def test_flower_refuses_requests_without_the_basic_auth(
    stack: Settings, tmp_path: Path, started: Callable[..., subprocess.Popen[bytes]]
) -> None:
    flower = built()["flower"]
    port = _free_port()
    args = [a.replace("--port=5555", f"--port={port}") for a in argv(flower["command"])]
    assert f"--port={port}" in args
    env = _env_for(flower, stack, tmp_path)
    proc = started(args, env, tmp_path / "flower.log")

    wait_until(lambda: proc.poll() is not None or _healthy(flower, env, ("5555", port)), timeout=30,
               what="flower's healthcheck")
    assert proc.poll() is None, (tmp_path / "flower.log").read_text()

    url = f"http://127.0.0.1:{port}"
    user, _, password = SECRETS["FLOWER_BASIC_AUTH"].partition(":")
    assert httpx.get(f"{url}/").status_code == 401
    assert httpx.get(f"{url}/api/workers").status_code == 401
    assert httpx.get(f"{url}/", auth=(user, "wrong")).status_code == 401
    assert httpx.get(f"{url}/", auth=(user, password)).status_code == 200


def test_the_ingest_server_is_healthy_once_the_migrate_service_ran(
    stack: Settings, tmp_path: Path, started: Callable[..., subprocess.Popen[bytes]]
) -> None:
    ingest, migrate_service = built()["ingest"], built()["migrate"]
    port = _free_port()
    args = argv(ingest["command"])
    args[args.index("--port") + 1] = str(port)
    env = _env_for(ingest, stack, tmp_path)
    proc = started(args, env, tmp_path / "ingest.log")
    url = f"http://127.0.0.1:{port}/healthz"

    def answers() -> bool:
        assert proc.poll() is None, (tmp_path / "ingest.log").read_text()
        try:
            urllib.request.urlopen(url, timeout=2)
        except urllib.error.HTTPError:
            return True  # up, but unhealthy
        except OSError:
            return False
        return True

    wait_until(answers, timeout=30, what="the ingest server to answer")
    assert not _healthy(ingest, env, ("8000", port))  # no tables yet: /healthz says 503

    migrated = subprocess.run(_program(argv(migrate_service["command"])), capture_output=True, text=True,
                              env=_env_for(migrate_service, stack, tmp_path), timeout=60)
    assert migrated.returncode == 0, migrated.stderr

    assert _healthy(ingest, env, ("8000", port))


def test_beat_is_healthy_while_its_beat_holds_the_lease_and_not_after_it_died(
    stack: Settings, tmp_path: Path, started: Callable[..., subprocess.Popen[bytes]]
) -> None:
    beat = built()["beat"]
    migrate.upgrade(stack)
    env = _env_for(beat, stack, tmp_path, GARRISON_BEAT_LEASE_TTL="1.0")

    proc = started(argv(beat["command"]), env, tmp_path / "beat.log")
    wait_until(lambda: proc.poll() is not None or _healthy(beat, env), timeout=40, what="beat's healthcheck")
    assert proc.poll() is None, (tmp_path / "beat.log").read_text()

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not _healthy(beat, env), timeout=20, what="beat's healthcheck to fail")
