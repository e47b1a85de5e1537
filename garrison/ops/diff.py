"""What changed between two JSON states: a list of paths added, removed or changed.

The console shows it between consecutive state versions of an entity (and between any two the operator
picks), so "version 7 set ``status`` from ``placed`` to ``shipped``" reads at a glance, where two whole
states side by side would not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from garrison.core.jsondata import json_equal

__all__ = ["Change", "diff"]

Kind = Literal["added", "removed", "changed"]
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``path`` is dotted (``lines[2].sku``; empty for the whole state)."""

    path: str
    kind: Kind
    before: Any = None
    after: Any = None


def diff(before: Any, after: Any, *, limit: int = 200) -> list[Change]:
    """The changes that turn ``before`` into ``after``, in path order, at most ``limit`` of them. Mappings
    and lists are compared item by item (lists by index); anything else as a whole value, with JSON's
    equality (``1`` is not ``True``)."""
    out: list[Change] = []
    _walk(before, after, "", out, limit)
    return out


def _walk(before: Any, after: Any, path: str, out: list[Change], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for name in sorted(set(before) | set(after), key=str):
            _step(before.get(name, _ABSENT), after.get(name, _ABSENT), f"{path}.{name}" if path else str(name),
                  out, limit)
        return
    if isinstance(before, list) and isinstance(after, list):
        for i in range(max(len(before), len(after))):
            _step(before[i] if i < len(before) else _ABSENT, after[i] if i < len(after) else _ABSENT,
                  f"{path}[{i}]", out, limit)
        return
    if not json_equal(before, after):
        out.append(Change(path, "changed", before, after))


def _step(before: Any, after: Any, path: str, out: list[Change], limit: int) -> None:
    if len(out) >= limit:
        return
    if before is _ABSENT:
        out.append(Change(path, "added", None, after))
    elif after is _ABSENT:
        out.append(Change(path, "removed", before, None))
    else:
        _walk(before, after, path, out, limit)
