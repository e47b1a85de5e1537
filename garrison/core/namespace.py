"""garrison's own identifiers, in a namespace no user input can reach (guarantee 10).

Every idempotency key garrison makes for itself (a timer's firing, a retry, a pulse, a journey's emit,
a node's delivery, a statechart's entry event, an actor's send, what an effect sends) starts with
:data:`PREFIX`, the prefix garrison's own event names already use. Every entrance (``ingest``,
``ingest_many``, ``send``, the CLI, HTTP, Django, Flask) refuses an idempotency key that starts with it,
with a :class:`~garrison.errors.ValidationError` naming the field, so an app event can never look like a
duplicate of garrison's own (an app key ``timer:1`` used to make timer 1's firing a no-op).

A key garrison makes is a :class:`Reserved` string, which is how :func:`garrison.core.ingest.validate`
tells it from a user's. Timer names need no prefix: only garrison names timers, per entity and automation.
"""

from __future__ import annotations

import hashlib

PREFIX = "garrison/"
MAX_KEY = 255

__all__ = ["MAX_KEY", "PREFIX", "Reserved", "is_reserved", "legacy_key", "reserved"]


class Reserved(str):
    """An identifier garrison made, in the reserved namespace. Plain ``str`` everywhere it is stored."""

    __slots__ = ()


def reserved(kind: str, *parts: object) -> Reserved:
    """``garrison/<kind>:<part>:<part>...``, at most 255 characters (a longer one keeps its head and
    ends in a digest of the whole, so the same parts always give the same key)."""
    text = PREFIX + ":".join([kind, *(str(p) for p in parts)])
    if len(text) > MAX_KEY:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        text = f"{text[:MAX_KEY - 72]}~sha256:{digest}"
    return Reserved(text)


def is_reserved(value: str) -> bool:
    """Whether ``value`` lies in garrison's namespace (whoever made it)."""
    return value.startswith(PREFIX)


def legacy_key(key: str) -> str | None:
    """How garrison spelled ``key`` before the namespace, for the keys a retried effect may repeat
    across the upgrade: what a listener sent (``<effect key>:send:<n>``), a journey step's report
    (``<effect key>:<done|failed>``) and an update loop command's messages (``<effect key>:msg:<n>``).
    Ingest treats an event stored under that spelling as a duplicate, so an effect retried after the
    upgrade sends nothing twice. None for every other key: timers and retries are claimed by a status
    change, and pulse pages resume from their committed cursor."""
    for kind, join in (("send", ":send:"), ("step", ":"), ("command", ":")):
        head = f"{PREFIX}{kind}:"
        if key.startswith(head) and "~sha256:" not in key:
            effect_key, _, last = key[len(head):].rpartition(":")
            if effect_key and ":effect:" in effect_key:
                return f"{effect_key}{join}{last}"
    return None
