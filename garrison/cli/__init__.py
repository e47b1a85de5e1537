"""The ``garrison`` command line. ``main`` is the console script's entry point."""

from __future__ import annotations

from garrison.cli.commands import cli
from garrison.cli.operate import register

register(cli)


def main() -> None:
    cli(prog_name="garrison")


__all__ = ["cli", "main"]
