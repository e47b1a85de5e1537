"""A go-state loop that starts itself: ``loop.start(key)`` runs ``init`` and its commands with no message.

go-state's ``Run`` executes ``Init`` and its commands at once; a garrison loop otherwise runs ``init``
lazily, on its entity's first message. This feed reader has nothing to wait for: ``init`` asks for the
first page, each ``fetched`` page asks for the next, and the loop stops when the feed has no more.
``reader.start("news")`` starts it; a second start (a redeploy, a retried request) changes nothing.

Run it with nothing else running (SQLite under ./.garrison, no worker: ``client.run_pending()``)::

    python examples/start_loop.py

In production, put ``reader`` in a module named by GARRISON_AUTOMATIONS, run ``garrison worker``, and call
``reader.start(key)`` from anywhere that has the settings (a deploy script, a Django view).
"""

from __future__ import annotations

from typing import Any

from garrison import CommandContext, Garrison, Message, Msg, NullPublisher, Settings, UpdateLoop

FEED = {1: ["garrison 0.1"], 2: ["pulses", "journeys"], 3: ["time travel"]}  # stands in for a paged API


def init() -> tuple[Any, Any]:
    return {"items": [], "pages": 0, "done": False}, reader.cmd("fetch", 1)


def update(model: Any, msg: Message) -> tuple[Any, Any]:
    if msg.name == "fetched":
        model["items"] += msg.data["items"]
        model["pages"] += 1
        if msg.data["more"]:
            return model, reader.cmd("fetch", msg.data["page"] + 1)
        model["done"] = True
    return model, None


def view(model: Any) -> str:
    status = "done" if model["done"] else "reading"
    return f"{len(model['items'])} items from {model['pages']} pages ({status})"


reader = UpdateLoop("reader", init=init, update=update, view=view)


@reader.command
def fetch(ctx: CommandContext, page: int) -> Msg:
    """A side effect (an HTTP call, say), run after commit with an idempotency key."""
    return Msg("fetched", {"page": page, "items": FEED.get(page, []), "more": page + 1 in FEED})


def main(client: Garrison | None = None) -> str:
    if client is None:
        client = Garrison(Settings.from_env(), publisher=NullPublisher())
        client.init_db()
    client.register(reader)
    reader.start("news", client=client)
    reader.start("news", client=client)  # idempotent: still one init, one first fetch
    client.run_pending()
    shown = str(client.view("reader", "news"))
    print(shown)
    return shown


if __name__ == "__main__":
    main()
