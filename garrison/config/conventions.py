"""The Celery settings garrison's tasks need, checked wherever they come from: a user's Celery app
(``garrison.tasks.install(app)``) or Django's ``CELERY_*`` settings (``garrison.contrib.django``).

garrison never pickles, needs its tasks acknowledged late and rejected when a worker dies (the SQL cursor
decides what was applied, so a redelivered task is harmless, a lost one is not), needs real ETA tasks for
its timers (eager mode ignores ETA), and reports failures and pulse progress as task events. A setting that
contradicts one of these is refused by :func:`conflicts`, naming it, rather than silently running garrison
on terms it cannot keep. Nothing here imports Celery: the values come in as a plain mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REQUIREMENTS", "conflicts"]

JSON = {"json", "application/json"}


def _json_only(value: Any) -> bool:
    names = [value] if isinstance(value, str) else list(value or ())
    return bool(names) and all(str(n).lower() in JSON for n in names)


def _is_json(value: Any) -> bool:
    return value is None or str(value).lower() in JSON


# setting name (Celery's lower-case name) -> (is the value acceptable?, what garrison needs and why)
REQUIREMENTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "accept_content": (_json_only, "['json']: garrison's workers accept JSON only, never pickle"),
    "task_serializer": (_is_json, "'json': garrison's messages are JSON only"),
    "result_serializer": (_is_json, "'json': garrison's results are JSON only"),
    "event_serializer": (_is_json, "'json': task events are JSON only"),
    "task_always_eager": (lambda v: not v, "False: eager mode ignores ETA, so garrison's timers would fire at once"),
    "task_acks_late": (lambda v: v is None or bool(v),
                       "True: a task is acknowledged after it ran, so a worker killed mid-task loses nothing"),
    "task_reject_on_worker_lost": (lambda v: v is None or bool(v),
                                   "True: a task whose worker died is redelivered, not acknowledged"),
    "worker_send_task_events": (lambda v: bool(v),
                                "True: garrison reports failures and pulse progress as task events (Flower)"),
}


def conflicts(values: Mapping[str, Any], label: Callable[[str], str] = str,
              only: tuple[str, ...] | None = None) -> list[str]:
    """One line per setting of ``values`` that garrison cannot run with: ``label(name)`` (how the user
    spells it, e.g. ``CELERY_ACCEPT_CONTENT``), its value, and what garrison needs. Settings absent from
    ``values`` are not judged."""
    out = []
    for name, (acceptable, needed) in REQUIREMENTS.items():
        if only is not None and name not in only:
            continue
        if name in values and not acceptable(values[name]):
            out.append(f"{label(name)} = {values[name]!r}; garrison needs {needed}")
    return out
