"""``python manage.py garrison ...``: the ``garrison`` command, with the settings Django gives garrison.

The settings are exported as ``GARRISON_*`` variables first, which is how ``garrison worker`` hands them
to Celery and to its pool processes; those processes are forks of this one, with Django set up.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand  # type: ignore[import-untyped]


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run a garrison command (db init, worker, beat, inspect, ingest...) with Django's GARRISON settings."

    def add_arguments(self, parser: Any) -> None:
        import argparse

        parser.add_argument("args", nargs=argparse.REMAINDER, help="the garrison command and its arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after `garrison` is garrison's (its --help included), not Django's argparse's.
        code = _run(argv[2:], f"{os.path.basename(argv[0])} {argv[1]}", standalone=True)
        sys.exit(code)

    def handle(self, *args: str, **options: Any) -> None:
        code = _run(list(args), "garrison", standalone=False)
        if code:
            from django.core.management.base import CommandError

            raise CommandError(f"garrison {' '.join(args)} exited with {code}", returncode=code)


def _run(args: list[str], prog_name: str, *, standalone: bool) -> int:
    from garrison.cli import cli
    from garrison.contrib.django import get_client

    os.environ.update(get_client().settings.as_env())
    try:
        result = cli.main(args=args, prog_name=prog_name, standalone_mode=standalone)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return result if isinstance(result, int) else 0
