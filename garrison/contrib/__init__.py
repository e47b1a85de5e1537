"""Integrations with web frameworks: ``garrison.contrib.django`` and ``garrison.contrib.flask``.

Both read garrison's settings from the framework's own configuration (Django's ``GARRISON`` setting,
Flask's ``app.config["GARRISON_..."]``) and let ``GARRISON_*`` environment variables fill in whatever the
configuration leaves out. :func:`settings_from_config` is that shared step; the environment itself is
read only by :meth:`garrison.config.Settings.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from garrison.config import Settings
from garrison.errors import ConfigurationError

__all__ = ["SETTING_NAMES", "settings_from_config"]

# Field name -> its annotation, as a string (``Settings`` is declared with postponed annotations).
_KINDS: dict[str, str] = {f.name: str(f.type) for f in fields(Settings)}
SETTING_NAMES = frozenset(_KINDS)
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def settings_from_config(given: Mapping[str, Any], label: Callable[[str], str]) -> Settings:
    """Settings from a framework's configuration: ``given`` maps field names (``database_url``) to the
    configured values, which win over ``GARRISON_*`` environment variables.

    Values may be Python values (a list of automation modules, a number) or the strings an environment
    variable would hold. ``label(name)`` says where a value came from (``GARRISON["TENANT"]``), so an
    error points at the line of configuration to fix.
    """
    overrides: dict[str, Any] = {}
    for name, value in given.items():
        if name not in _KINDS:
            raise ConfigurationError(
                f"{label(name)} is not a garrison setting; known: {', '.join(sorted(n.upper() for n in _KINDS))}",
                field=name,
            )
        overrides[name] = _coerce(name, _KINDS[name], value, label(name))
    extra = overrides.pop("extra", None)
    settings = Settings.from_env(**overrides)
    if extra:
        settings = settings.with_overrides(extra={**settings.extra, **extra})
    return settings


def _coerce(name: str, kind: str, value: Any, where: str) -> Any:
    """The configured value as the type ``Settings`` holds, or a ConfigurationError naming it."""
    expected = kind
    if "tuple" in kind:
        expected = "a list of strings (or one comma-separated string)"
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif "Path" in kind:
        expected = "a path"
        if isinstance(value, str | os.PathLike):
            return Path(value)
    elif kind in ("int", "float"):
        expected = f"a number ({kind})"
        number = int if kind == "int" else float
        accepted = int if kind == "int" else int | float
        if isinstance(value, accepted) and not isinstance(value, bool):
            return number(value)
        if isinstance(value, str):
            try:
                return number(value)
            except ValueError:
                pass
    elif "Mapping" in kind:
        expected = "a mapping of strings"
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
    elif kind == "bool":
        expected = "True or False"
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
    elif kind == "str":
        expected = "a string"
        if isinstance(value, str):
            return value
    else:
        return value  # a kind of field this reader does not know: Settings checks it
    raise ConfigurationError(f"{where} must be {expected}, not {value!r}", field=name)
