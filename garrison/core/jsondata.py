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
    if value.isascii():
        return "contains a NUL character" if "\x00" in value else None
    found = _BAD_TEXT.search(value)
    if found is None:
        return None
    return "contains a NUL character" if found.group() == "\x00" else "contains a lone surrogate (not UTF-8)"


def check_json(value: Any, *, max_nesting: int = DEFAULT_MAX_NESTING) -> JSON:
    """``value`` as plain JSON, or :class:`JSONRefused` naming where it is not.

    The value itself comes back when it is plain already (the common case: nothing is copied); a copy
    when it holds tuples (stored as lists) or subclasses of str, int or float (stored as the plain value).
    Recursion is bounded by ``max_nesting`` (at most a few hundred), so a value nested 10,000 deep is
    refused at its limit rather than overflowing the stack.
    """
    try:
        plain = _plain(value, 0, max_nesting)
    except _Refused as exc:
        raise JSONRefused(exc.reason, "".join(reversed(exc.parts))) from None
    return value if plain else _copy(value)


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.parts: list[str] = []


def _plain(value: Any, depth: int, limit: int) -> bool:
    """Check ``value``; True when it is plain JSON already (no tuple, no subclass anywhere in it)."""
    kind = type(value)
    if kind is str:
        bad = check_text(value)
        if bad:
            raise _Refused(bad)
        return True
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return True
        raise _Refused("is an integer beyond +-(2**53 - 1), which JSON peers cannot read exactly: send it as a string")
    if kind is bool or value is None:
        return True
    if kind is float:
        if math.isfinite(value):
            return True
        raise _Refused(f"is {value}, which is not JSON")
    if kind is dict or kind is list or kind is tuple:
        if depth >= limit:
            raise _Refused(f"is nested deeper than {limit} levels (GARRISON_MAX_NESTING)")
        plain = kind is not tuple
        if kind is dict:
            for k, v in value.items():
                if type(k) is not str:
                    raise _Refused(f"has a key {k!r} that is not a string")
                bad = check_text(k)
                if bad:
                    raise _Refused(f"has a key that {bad}")
                try:
                    plain = _plain(v, depth + 1, limit) and plain
                except _Refused as exc:
                    exc.parts.append(f".{k}" if depth else k)
                    raise
        else:
            for i, v in enumerate(value):
                try:
                    plain = _plain(v, depth + 1, limit) and plain
                except _Refused as exc:
                    exc.parts.append(f"[{i}]")
                    raise
        return plain
    if isinstance(value, dict | list | tuple):  # subclasses: checked as their base, stored plain
        _plain(dict(value) if isinstance(value, dict) else list(value), depth, limit)
        return False
    if isinstance(value, str | int | float):
        _plain(_base(value), depth, limit)
        return False
    raise _Refused(f"is a {kind.__name__}, which is not JSON")


def _base(value: Any) -> Any:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    return int(value) if isinstance(value, int) else float(value)


def _copy(value: Any) -> Any:
    """A plain copy of a value :func:`_plain` accepted."""
    if isinstance(value, dict):
        return {str.__str__(k): _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    if isinstance(value, str | int | float) and not isinstance(value, bool) and type(value) not in (str, int, float):
        return _base(value)
    return value


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
        plain = check_json(value, max_nesting=max_nesting)
        # A copy, as before: what a handler returns may share objects with what it was given.
        return clone_json(plain) if plain is value else plain
    except JSONRefused as exc:
        where = f"{what}, at {exc.path}," if exc.path else what
        raise TypeError(f"{where} {exc.reason}") from exc
