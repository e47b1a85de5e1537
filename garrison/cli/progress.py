"""Progress bars for long CLI commands (ingest --file, replay --progress, pulses watch)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # click's progress bar class is private; it is only named in a hint
    from click._termui_impl import ProgressBar


def progress_bar(label: str, length: int | None, *, show: bool | None = None) -> ProgressBar[int]:
    """A progress bar on stderr (stdout stays for results): drawn when ``show``, or by default when stderr
    is a terminal. On a stream that is not a terminal, click writes each new label as a line instead.
    ``length`` None: the total is not known (a pipe), the bar counts."""
    stream = sys.stderr
    hidden = not (stream.isatty() if show is None else show)
    items: Iterable[int] | None = itertools.count() if length is None else None
    return click.progressbar(
        items, length=length, label=label, file=stream, hidden=hidden, show_pos=length is None, width=30,
    )
