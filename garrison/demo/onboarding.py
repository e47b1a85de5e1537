"""The events seed's onboarding journey: what ``garrison demo`` and ``make demo`` run on a real worker.

On ``app/email.submitted`` for a user:

1. wait for ``app/account.created``, reminding the user with exponential backoff (1 s, 2 s, 4 s...), the
   delay counted from the reminders sent earlier in the run (``ctx.events``);
2. wait 6 s for ``app/email.verified``; without it, log so and wait as long as it takes;
3. wait for ``post1`` then ``post2`` (``app/post.created``), 2 s at a time, reminding after each timeout;
4. end the run with a result.

Every wait is a durable timer (a SQL row and an ETA task): stop the worker in the middle and the run
goes on where it was when a worker comes back. ``examples/onboarding.py`` runs it on a simulated clock.
"""

from __future__ import annotations

from typing import Any

from garrison.automations.journeys.journey import JourneyContext, journey
from garrison.core.contract import Message

MAX_REMINDERS = 5


@journey("onboarding", on="app/email.submitted")
def onboarding(event: Message, ctx: JourneyContext) -> dict[str, Any]:
    email = event.data["email"]

    # 1. Create an account, with exponential backoff counted from the reminders sent so far.
    while True:
        sent = len(ctx.events("reminder/account.created", match={"email": email}))
        delay = f"{2 ** sent}s"
        account = ctx.wait_for("app/account.created", match={"email": email}, timeout=delay)
        if account:
            break
        ctx.log(f"waited {delay} for account.created for user {ctx.key}")
        if sent >= MAX_REMINDERS:
            ctx.log("\tgiving up on the account")
            return {"email": email, "account": None}
        ctx.log("\tsend reminder to create account")
        ctx.ingest("reminder/account.created", {"email": email})
    user_id = account[0].data["userId"]

    # 2. Verify the email: 6 s, then as long as it takes.
    if not ctx.wait_for("app/email.verified", match={"userId": user_id}, timeout="6s"):
        ctx.log("waited 6s for app/email.verified")
        ctx.log("\tno email verified, wait for it")
        ctx.wait_for("app/email.verified", match={"userId": user_id})

    # 3. Two posts, 2 s at a time, with a reminder after each wait.
    posts = []
    for post in ("post1", "post2"):
        for _ in range(MAX_REMINDERS + 1):
            created = ctx.wait_for("app/post.created", match={"id": post}, timeout="2s")
            if created:
                posts.append(created[0].data)
                break
            ctx.log(f"waited 2s for {post} created")
            ctx.log(f"\tsend reminder to write {post}")
            ctx.ingest("reminder/post.created", {"id": post, "userId": user_id})
        else:
            return {"email": email, "userId": user_id, "posts": posts}

    ctx.log("end of workflow")
    return {"email": email, "userId": user_id, "posts": posts}


# The seed's demo timeline: (seconds after the start, event, data) for user1.
TIMELINE: list[tuple[float, str, dict[str, Any]]] = [
    (0.0, "app/email.submitted", {"email": "user1@example.com"}),
    (7.8, "app/account.created", {"email": "user1@example.com", "userId": "u1"}),
    (14.5, "app/email.verified", {"userId": "u1"}),
    (14.7, "app/login", {"userId": "u1"}),
    (15.0, "app/post.created", {"id": "post1", "userId": "u1"}),
    (20.5, "app/post.created", {"id": "post2", "userId": "u1"}),
]
