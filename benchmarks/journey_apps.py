"""The journeys timers.py and journeys.py run in real workers (``GARRISON_AUTOMATIONS=benchmarks.journey_apps``).

- ``sleeper``: on ``bench/sleep``, sleeps until ``data["until"]`` (one durable timer per run), then ends.
  timers.py creates its 110,000 timers through it, as a user's journeys would.
- ``bench_onboarding``: the shape of ``garrison.demo.onboarding`` with short timeouts (``BENCH_JOURNEY_TIMEOUT_MS``,
  150 ms by default): wait for the account (one reminder, then a longer wait), wait for the email to be
  verified, then two posts with a reminder after each timeout. journeys.py drives it with
  ``app/email.submitted``, ``app/account.created`` and ``post1``'s ``app/post.created`` per user, so every
  run resolves two waits from events (one by look-back), times out three times (email.verified; post2 twice),
  emits one reminder and completes with ``posts == ["post1"]``. ``benchmarks/raw_journeys.py`` is the same
  flow written as a naive Celery app.

Each journey declares ``events=``, so it is handed only its own events (and its own control messages).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from garrison.automations.journeys.journey import JourneyContext, journey
from garrison.core.contract import Message

TIMEOUT_MS = int(os.environ.get("BENCH_JOURNEY_TIMEOUT_MS", "150"))


@journey("sleeper", on="bench/sleep", events=())
def sleeper(event: Message, ctx: JourneyContext) -> dict[str, Any]:
    ctx.sleep_until(datetime.fromisoformat(event.data["until"]))
    return {"slept_until": event.data["until"]}


@journey("bench_onboarding", on="app/email.submitted", events=("app/*",))
def bench_onboarding(event: Message, ctx: JourneyContext) -> dict[str, Any]:
    timeout = timedelta(milliseconds=TIMEOUT_MS)
    email = event.data["email"]

    account = ctx.wait_for("app/account.created", match={"email": email}, timeout=timeout)
    if not account:
        ctx.ingest("reminder/account.created", {"email": email})
        account = ctx.wait_for("app/account.created", match={"email": email}, timeout=2 * timeout)
        if not account:
            return {"email": email, "account": None}
    user_id = account[0].data["userId"]

    verified = ctx.wait_for("app/email.verified", match={"userId": user_id}, timeout=timeout) is not None

    posts = []
    for post in ("post1", "post2"):
        created = ctx.wait_for("app/post.created", match={"id": post}, timeout=timeout)
        if not created:
            ctx.ingest("reminder/post.created", {"id": post, "userId": user_id})
            created = ctx.wait_for("app/post.created", match={"id": post}, timeout=timeout)
        if created:
            posts.append(post)
    return {"email": email, "userId": user_id, "verified": verified, "posts": posts}
