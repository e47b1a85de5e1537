"""casern's ``follow``: a consumer of every state change of a reducer machine, resumable after a restart.

casern's ``follow`` is a live feed of state changes. ``client.follow()`` is garrison's: each change comes
with ``prev`` and ``current``, the message and data that made it, and a ``cursor``. The consumer below keeps
a search index of open tickets and stores the cursor of the last change it handled next to it (here a file;
in production, in the same transaction as its own writes). Restarted, it resumes right after that change:
nothing missed, nothing handled twice.

Run it with nothing else running (SQLite under ./.garrison, no worker: ``client.run_pending()``)::

    python examples/follow_changes.py

In production: the machine runs on workers; the consumer is its own process calling ``consume`` in a loop
(``wait=True`` blocks until the next change, woken by PostgreSQL's NOTIFY), or ``garrison follow tickets
--since CURSOR --json``, or ``GET /follow`` (server-sent events) from another language.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from garrison import Garrison, Machine, NullPublisher, Settings

tickets = Machine("tickets")


@tickets.reducer
def opened(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"status": "open", "title": data["title"]}


@tickets.reducer
def closed(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {**state, "status": "closed"} if state else state


class OpenTickets:
    """The consumer: an index of open tickets, and the cursor of the last change it applied."""

    def __init__(self, cursor_file: Path) -> None:
        self.cursor_file = cursor_file
        self.open: dict[str, str] = {}
        self.handled = 0

    def consume(self, client: Garrison, *, wait: bool = False) -> None:
        since = self.cursor_file.read_text() if self.cursor_file.exists() else None
        with client.follow("tickets", since=since, wait=wait) as feed:
            for change in feed:
                if change.current["status"] == "open":
                    self.open[change.key] = change.current["title"]
                else:
                    self.open.pop(change.key, None)
                self.handled += 1
                print(f"{change.key} v{change.version} {change.message}: "
                      f"{(change.prev or {}).get('status', '-')} -> {change.current['status']}")
                self.cursor_file.write_text(change.cursor)  # handled: resume after it


def main(client: Garrison | None = None, cursor_file: Path | None = None) -> dict[str, Any]:
    if client is None:
        client = Garrison(Settings.from_env(), publisher=NullPublisher())
        client.init_db()
    client.register(tickets)
    cursor_file = cursor_file or Path(tempfile.mkdtemp()) / "tickets.cursor"

    tickets.send("opened", "T-1", {"title": "printer on fire"}, client=client)
    tickets.send("opened", "T-2", {"title": "no coffee"}, client=client)
    client.run_pending()
    first = OpenTickets(cursor_file)
    first.consume(client)

    tickets.send("closed", "T-1", client=client)
    tickets.send("opened", "T-3", {"title": "wifi down"}, client=client)
    client.run_pending()
    restarted = OpenTickets(cursor_file)  # a new process: only the cursor survived
    restarted.open = dict(first.open)     # ... and the index it keeps (a table of yours, in production)
    restarted.consume(client)

    print(f"open: {sorted(restarted.open)}")
    return {"open": restarted.open, "handled": first.handled + restarted.handled}


if __name__ == "__main__":
    main()
