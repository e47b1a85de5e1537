"""JSON values as garrison stores them: copies, canonical text, strict equality, and the check that a
value can be stored, read back the same by every JSON peer, and applied by a worker.

What :func:`check_json` refuses, and why:

- NUL characters and lone surrogates, in strings and object keys: PostgreSQL's ``text`` and ``jsonb``
  cannot hold NUL, and a lone surrogate has no UTF-8 encoding.
- Objects nested deeper than a limit (``GARRISON_MAX_NESTING``, 64 by default): a value nested
  hundreds deep is stored, then fails in every worker that copies it (recursion); thousands deep it
  fails in ``json`` itself.
- ``NaN`` and the infinities: not JSON.
- Integers beyond +-(2**53 - 1), the range RFC 7493 (I-JSON) tells JSON peers to keep to: JavaScript,
  Flower, jq and most HTTP clients read larger ones as doubles and silently change them. Send an id
  that large as a string.
- Object keys that are not strings (JSON would turn ``1`` and ``"1"`` into one key), and any value that
  is not a dict, list, tuple, str, int, float, bool or None.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

JSON = Any

# The nesting limit when no setting says otherwise (``Settings.max_nesting``).
DEFAULT_MAX_NESTING = 64
MAX_SAFE_INTEGER = 2**53 - 1

__all__ = [
    "DEFAULT_MAX_NESTING", "JSON", "MAX_SAFE_INTEGER", "JSONRefused", "canonical", "check_json", "check_text",
    "clone_json", "ensure_json", "json_equal",
]

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class JSONRefused(ValueError):
    """A value :func:`check_json` refuses. ``path`` is where in it (``items[3].name``), ``""`` for the
    value itself; callers turn it into their own error naming the field."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(f"{path or 'the value'} {reason}")
        self.reason = reason
        self.path = path


def check_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL or a lone surrogate), or None when it can."""
    found = _BAD_TEXT.search(value)
    if found is None:
        return None
    return "contains a NUL character" if found.group() == "\x00" else "contains a lone surrogate (not UTF-8)"


def check_json(value: Any, *, max_nesting: int = DEFAULT_MAX_NESTING) -> JSON:
    """``value`` as plain JSON (tuples become lists), or :class:`JSONRefused` naming where it is not.

    Iterative, so a value nested 10,000 deep is refused rather than overflowing the stack.
    """
    root: list[Any] = [None]
    # (value, container to put the copy in, index or key there, depth, path)
    stack: list[tuple[Any, Any, Any, int, str]] = [(value, root, 0, 0, "")]
    while stack:
        item, into, slot, depth, path = stack.pop()
        kind = type(item)
        if kind is str:
            bad = check_text(item)
            if bad:
                raise JSONRefused(bad, path)
            into[slot] = item
        elif kind is bool or item is None:
            into[slot] = item
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise JSONRefused("is an integer beyond +-(2**53 - 1), which JSON peers cannot read exactly: "
                                  "send it as a string", path)
            into[slot] = item
        elif kind is float:
            if not math.isfinite(item):
                raise JSONRefused(f"is {item}, which is not JSON", path)
            into[slot] = item
        elif isinstance(item, dict):
            if depth >= max_nesting:
                raise JSONRefused(f"is nested deeper than {max_nesting} levels (GARRISON_MAX_NESTING)", path)
            copy: dict[str, Any] = {}
            into[slot] = copy
            for k, v in item.items():
                if type(k) is not str:
                    raise JSONRefused(f"has a key {k!r} that is not a string", path)
                bad = check_text(k)
                if bad:
                    raise JSONRefused(f"has a key that {bad}", path)
                copy[k] = None
                stack.append((v, copy, k, depth + 1, f"{path}.{k}" if path else k))
        elif isinstance(item, list | tuple):
            if depth >= max_nesting:
                raise JSONRefused(f"is nested deeper than {max_nesting} levels (GARRISON_MAX_NESTING)", path)
            items: list[Any] = [None] * len(item)
            into[slot] = items
            for i, v in enumerate(item):
                stack.append((v, items, i, depth + 1, f"{path}[{i}]"))
        elif isinstance(item, str | int | float):
            # Subclasses (enums and the like) are stored as the plain value, as ``json`` writes them.
            plain = str.__str__(item) if isinstance(item, str) else bool(item) if isinstance(item, bool) else (
                int(item) if isinstance(item, int) else float(item))
            stack.append((plain, into, slot, depth, path))
        else:
            raise JSONRefused(f"is a {kind.__name__}, which is not JSON", path)
    return root[0]


def clone_json(value: JSON) -> JSON:
    """A deep copy of JSON data, much faster than ``copy.deepcopy`` for dicts and lists."""
    if isinstance(value, dict):
        return {k: clone_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clone_json(v) for v in value]
    return value


def canonical(value: JSON) -> str:
    """A JSON text that is equal for equal JSON values (and tells ``1`` from ``true`` and ``1.0``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_equal(a: JSON, b: JSON) -> bool:
    # ``==`` is fast but calls True == 1 == 1.0 equal; confirm equality on the canonical text.
    return a == b and canonical(a) == canonical(b)


def ensure_json(value: JSON, what: str, *, max_nesting: int = 2 * DEFAULT_MAX_NESTING) -> JSON:
    """Refuse what cannot be stored and applied (see :func:`check_json`) with a TypeError naming ``what``,
    so nothing un-storable reaches the database. For what handlers return (states, contexts, results),
    which may hold event data: twice ingest's default nesting, as the engine allows (its own check,
    ``core.contract.check_outcome``, applies the configured limit)."""
    try:
        return check_json(value, max_nesting=max_nesting)
    except JSONRefused as exc:
        where = f"{what}, at {exc.path}," if exc.path else what
        raise TypeError(f"{where} {exc.reason}") from exc
