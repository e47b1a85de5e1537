"""``GET /follow``: the change feed as server-sent events, for consumers in any language.

Each change is one event: ``id`` is its cursor (a browser's ``EventSource`` sends it back as
``Last-Event-ID`` when it reconnects, so the stream resumes right after it: nothing missed, nothing
repeated), ``event: change``, and ``data`` the change as JSON. A comment line (``: keep-alive``) goes out
after ``HEARTBEAT`` seconds without a change, so proxies keep the connection open and a consumer that went
away is noticed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from garrison.client import Garrison
from garrison.core.feed import Follow

HEARTBEAT = 15.0

__all__ = ["HEARTBEAT", "open_feed", "sse"]


def open_feed(client: Garrison, tenant: str, automation: str | None, since: str | None, wait: bool) -> Follow:
    """Opened before the response starts, so a bad or expired cursor is an HTTP error, not a broken stream."""
    return client.follow(automation, since=since, tenant=tenant, wait=wait)


def sse(feed: Follow, heartbeat: float = HEARTBEAT) -> Iterator[str]:
    """The event stream of ``feed`` until it ends (``wait=False``: once caught up) or the client leaves."""
    try:
        while True:
            changes = feed.next_batch(None if not feed.wait else heartbeat)
            if not changes:
                if not feed.wait:
                    return
                yield ": keep-alive\n\n"
                continue
            for change in changes:
                data = json.dumps(change.to_json(), separators=(",", ":"), allow_nan=False)
                yield f"id: {change.cursor}\nevent: change\ndata: {data}\n\n"
    finally:
        feed.close()
