"""JSON values as garrison stores them: copies, canonical text, strict equality, and a check that a
value can be stored at all."""

from __future__ import annotations

import json
from typing import Any

JSON = Any

__all__ = ["JSON", "canonical", "clone_json", "ensure_json", "json_equal"]


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


def ensure_json(value: JSON, what: str) -> JSON:
    """Refuse what JSON cannot carry (sets, objects, NaN), so nothing un-storable reaches the database."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON: {exc}") from exc
