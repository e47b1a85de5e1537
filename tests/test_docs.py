"""Docs are code: every code block of the README and of ``docs/`` is run or checked, and the site builds
with warnings as errors.

The convention (``docs/contributing-docs.md`` says it to authors):

- ``python`` blocks of a page run in order, in one namespace per page, in a fresh temporary directory with
  the embedded default settings (no ``GARRISON_*`` variable: SQLite and the filesystem broker under
  ``./.garrison``; no worker unless the page starts one). A block that cannot run as written is preceded by
  ``<!-- docs: no-run (reason) -->`` and is still compiled.
- ``sh`` blocks: each ``garrison ...`` command (also after ``python manage.py`` or ``flask --app X``) must
  parse with the CLI's own parser, and every ``$VARIABLE`` a page uses must be set on that page first.
- ``text`` blocks are output; ``json``, ``yaml`` and ``dockerfile`` blocks are parsed. Any other language
  fails the test, so a block cannot slip through unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml

from garrison.cli import cli
from tests.harness import ROOT

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
NO_RUN = re.compile(r"<!--\s*docs:\s*no-run\s*\((.+)\)\s*-->")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
LANGUAGES = {"python", "sh", "text", "json", "yaml", "dockerfile"}
# Variables a shell has without a page setting them.
SHELL_VARIABLES = {"HOME", "PATH", "PWD", "USER", "HOSTNAME", "SHELL"}
DOCKERFILE = {"FROM", "COPY", "ADD", "RUN", "ENV", "ARG", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "EXPOSE",
              "LABEL", "VOLUME", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str
    no_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        reason = NO_RUN.search(before)
        body = "\n".join(row[len(match["indent"]):] for row in match["body"].splitlines())
        found.append(Block(page, line, match["lang"].lower(), body, reason.group(1) if reason else None))
    return found


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_page_has_code_blocks_only_in_the_languages_the_docs_test_checks() -> None:
    wrong = [f"{b.where}: ```{b.lang or '(no language)'}" for p in PAGES for b in blocks(p) if b.lang not in LANGUAGES]
    assert not wrong, f"use one of {sorted(LANGUAGES)}:\n" + "\n".join(wrong)
    stray = [f"{b.where}: no-run on a {b.lang} block" for p in PAGES for b in blocks(p)
             if b.no_run and b.lang != "python"]
    assert not stray, "\n".join(stray)


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang == "python" for b in blocks(p))], ids=_id)
def test_the_python_blocks_of_a_page_run_in_order_on_the_embedded_default(page: Path, tmp_path: Path) -> None:
    runnable = []
    for block in blocks(page):
        if block.lang != "python":
            continue
        try:
            compile(block.body, block.where, "exec")
        except SyntaxError as exc:
            pytest.fail(f"{block.where}: not valid Python: {exc}", pytrace=False)
        if block.no_run is None:
            runnable.append({"where": block.where, "code": block.body})
    if not runnable:
        return
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(runnable))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "work"), env.get("PYTHONPATH", "")]))
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("docs_runner.py")), str(script)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{_id(page)}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"


def _commands(body: str) -> list[list[str]]:
    """Each simple command of a shell block, as words (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", body)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("|", "||", "&&", ";", "&"):
                if command:
                    out.append(command)
                command = []
            else:
                command.append(word)
    return out


def _garrison_args(words: list[str]) -> list[str] | None:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]  # VAR=value before the command
    if words[:1] == ["garrison"]:
        return words[1:]
    if words[:3] == ["python", "manage.py", "garrison"]:
        return words[3:]
    if words[:1] == ["flask"] and "garrison" in words:
        return words[words.index("garrison") + 1:]
    return None


def check_garrison(args: list[str]) -> None:
    """Parse ``garrison ARGS`` down to its last subcommand, as click would, without running it."""
    group: click.Command = cli
    ctx = group.make_context("garrison", list(args), resilient_parsing=False)
    while isinstance(group, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # click 9 folds them into args
        if not rest:
            return
        name, *rest = rest
        sub = group.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no such command {name!r}")
        ctx = sub.make_context(name, rest, parent=ctx)
        group = sub


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang == "sh" for b in blocks(p))], ids=_id)
def test_the_shell_blocks_of_a_page_are_valid_garrison_commands_with_their_variables_set(page: Path) -> None:
    assigned = set(SHELL_VARIABLES)
    problems = []
    for block in blocks(page):
        if block.lang != "sh":
            continue
        for words in _commands(block.body):
            for word in words:
                assigned |= {m.group(1) for m in re.finditer(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)=", word)}
            if words[:1] == ["export"]:
                assigned |= {w.split("=", 1)[0] for w in words[1:]}
            line = " ".join(words)
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", line):
                if name not in assigned and not name.islower():
                    problems.append(f"{block.where}: ${name} is used but never set on this page: {line}")
            args = _garrison_args(words)
            if args is None:
                continue
            try:
                check_garrison(args)
            except (click.ClickException, click.exceptions.Exit) as exc:
                if isinstance(exc, click.exceptions.Exit) and exc.exit_code == 0:
                    continue  # --help, --version
                if isinstance(exc, click.BadParameter) and any(
                        s in exc.format_message() for s in ("does not exist", "No such file")):
                    continue  # a file the reader has (garrison ingest --file events.jsonl)
                problems.append(f"{block.where}: `garrison {shlex.join(args)}`: {exc}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang in ("json", "yaml", "dockerfile") for b in blocks(p))],
                         ids=_id)
def test_the_json_yaml_and_dockerfile_blocks_of_a_page_parse(page: Path) -> None:
    for block in blocks(page):
        if block.lang == "yaml":
            yaml.safe_load(block.body)
        elif block.lang == "json":
            try:
                json.loads(block.body)
            except json.JSONDecodeError:  # JSON Lines: one document per line
                for row in filter(None, (r.strip() for r in block.body.splitlines())):
                    json.loads(row)
        elif block.lang == "dockerfile":
            for row in block.body.splitlines():
                if row.strip() and not row.lstrip().startswith("#"):
                    assert row.split()[0].upper() in DOCKERFILE, f"{block.where}: {row}"


def test_the_readme_is_short_and_keeps_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make demo" in text and "make test" in text


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: mkdocs is not installed (pip install -e '.[test]')", pytrace=False)
        pytest.skip("mkdocs is not installed")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_checks_catch_what_the_old_readme_got_wrong(tmp_path: Path) -> None:
    """The Flask snippet that raised NameError, the curl that used an unset $ACME_KEY, a misspelt command
    and an unknown fence: each is reported."""
    page = tmp_path / "old.md"
    page.write_text(
        "```python\ndef create_app():\n    return 1\n\n@app.post('/subscribe')\ndef subscribe():\n    pass\n```\n\n"
        "```sh\ncurl -H \"Authorization: Bearer $ACME_KEY\" localhost:8000/events\ngarrison inspekt order-1\n```\n\n"
        "```console\n$ garrison stats\n```\n"
    )
    found = blocks(page)
    assert [b.lang for b in found] == ["python", "sh", "console"]
    assert "console" not in LANGUAGES
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([{"where": "old.md:1", "code": found[0].body}]))
    ran = subprocess.run([sys.executable, str(Path(__file__).with_name("docs_runner.py")), str(script)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and "NameError: name 'app' is not defined" in ran.stderr
    curl, inspekt = _commands(found[1].body)
    assert "ACME_KEY" in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", " ".join(curl))
    with pytest.raises(click.UsageError):
        check_garrison(_garrison_args(inspekt) or [])
