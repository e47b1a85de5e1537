"""The ``garrison`` command line. ``main`` is the console script's entry point."""

from __future__ import annotations

import os
import sys

from garrison.cli.commands import cli
from garrison.cli.db import db
from garrison.cli.fleet import automations, skip
from garrison.cli.follow import follow
from garrison.cli.ingest import ingest
from garrison.cli.operate import register, watch
from garrison.cli.pulses import pulses
from garrison.cli.serve import console, serve

cli.add_command(db)
cli.add_command(ingest)
register(cli)
cli.add_command(pulses)
pulses.add_command(watch)
cli.add_command(serve)
cli.add_command(skip)
cli.add_command(automations)
cli.add_command(follow)
cli.add_command(console)


def main() -> None:
    # As with ``python -m``: the project in the current directory is importable, so the modules named
    # in GARRISON_AUTOMATIONS are found by `garrison ingest` and by `garrison worker` and its children.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    cli(prog_name="garrison")


__all__ = ["cli", "main"]
