"""Structured logs: every line says which tenant, automation, key and event it is about, when that is known.

The runner wraps each piece of work in :func:`log_context` (the tenant and key of a batch, the automation,
key and effect of an effect it performs...). :class:`ContextFilter`, put on a handler, copies those fields
onto every record made inside the block, whoever logs it: garrison, Celery, or your reducer or listener.
A record that names a field itself (``log.warning(..., extra={"key": k})``) keeps its own value.

Two formats, chosen by ``GARRISON_LOG_FORMAT``:

- ``text`` (the default): the usual line, the known fields after it: ``... handler failed [tenant=acme
  automation=orders key=order-1 event_id=42 error=ValueError('no total')]``.
- ``json``: one JSON object per line (``ts``, ``level``, ``logger``, ``message``, the fields, any other
  ``extra``, ``exc_info``), for log shippers.

Workers and beat get this from garrison's Celery app; a web process or a script calls
:func:`configure_logging`. The context lives in a :class:`~contextvars.ContextVar`, so threads and
asyncio tasks each see their own.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

__all__ = [
    "FIELDS",
    "FORMATS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "context_suffix",
    "current_context",
    "formatter_for",
    "install",
    "log_context",
]

FORMATS = ("text", "json")
# The fields an operator looks for first, in the order they are shown; any other context field follows.
# ``error`` last: the exception a failed handler or effect raised, so its line says what went wrong.
FIELDS = ("tenant", "automation", "key", "event_id", "effect_id", "slot_id", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("garrison_log_context", default=_EMPTY)
# Attributes every LogRecord has; anything else on a record came from ``extra`` or a filter.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (None values are left out) to every record logged inside the block; nested blocks
    add to the outer one, and the outer fields come back when a block ends."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields :func:`log_context` set for the code running now."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the current :func:`log_context` fields onto each record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def context_suffix(record: logging.LogRecord) -> str:
    """`` [tenant=acme key=k1]``: the known :data:`FIELDS` of a record (empty when none is known)."""
    known = [(name, getattr(record, name)) for name in FIELDS if getattr(record, name, None) is not None]
    return " [" + " ".join(f"{k}={v}" for k, v in known) + "]" if known else ""


class TextFormatter(logging.Formatter):
    """A classic log line with the record's known fields after the message (before any traceback)."""

    def __init__(self, fmt: str | None = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + context_suffix(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, then the
    known fields, every other ``extra`` and, when there is one, the formatted ``exc_info``. A value that
    is not JSON is written as its ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = _extras(record)
        for name in FIELDS:
            if extras.get(name) is not None:
                line[name] = extras.pop(name)
        line.update((k, v) for k, v in sorted(extras.items()) if k not in line)
        line["process"] = record.processName
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter_for(log_format: str, fmt: str | None = None) -> logging.Formatter:
    """The formatter of ``GARRISON_LOG_FORMAT``; ``fmt`` is the text line's layout."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter(fmt or TEXT_FORMAT)
    raise ValueError(f"log format {log_format!r} is not one of {FORMATS}")


def install(handler: logging.Handler, log_format: str, fmt: str | None = None) -> logging.Handler:
    """Give ``handler`` the context fields and the formatter of ``log_format``."""
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    handler.setFormatter(formatter_for(log_format, fmt))
    return handler


def configure_logging(log_format: str = "text", level: int | str = "INFO", stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) from the root logger in ``log_format``, for a process that is not a
    garrison worker (a web app, a script): ``configure_logging(settings.log_format, settings.log_level)``.
    Calling it again replaces the handler it added before."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_garrison", False)]:
        root.removeHandler(handler)
    handler = install(logging.StreamHandler(stream or sys.stderr), log_format)
    handler._garrison = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
