"""Automations the operator-facing tests run (console, metrics, Flower): a shop machine whose reducer and
listener can be made to fail, and a signup journey with a step, a wait with a timeout, a sleep and a
second step that fails while a file exists (a provider that is down until an operator fixes it)."""

from __future__ import annotations

import os
from typing import Any

from garrison.automations.journeys.journey import JourneyContext, journey
from garrison.automations.machine import Machine, Transition
from garrison.core.contract import Message

shop = Machine("shop")


@shop.reducer
def placed(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if data.get("boom"):
        raise ValueError(f"total must be a number, not {data.get('total')!r}")
    return {"status": "placed", "total": data.get("total"), "note": data.get("note"), "lines": data.get("lines", [])}


@shop.reducer
def shipped(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    if state is None:
        return state
    return {**state, "status": "shipped", "carrier": data.get("carrier")}


@shop.listener
def notify(t: Transition) -> None:
    if t.data.get("listener_fails"):
        raise ConnectionError("mail server down")


def load_profile(user: str) -> dict[str, Any]:
    return {"user": user, "plan": "pro"}


def send_welcome(user: str, blocker: str | None = None) -> str:
    if blocker and os.path.exists(blocker):
        raise ConnectionError("mail provider down")
    return f"welcome sent to {user}"


@journey("signup", on="signup/started")
def signup(event: Message, ctx: JourneyContext) -> Any:
    user = event.data["user"]
    ctx.log(f"signup of {user} started")
    profile = ctx.step("load-profile", load_profile, user)
    verified = ctx.wait_for("signup/email.verified", match={"user": user}, timeout=event.data.get("timeout", "1s"))
    if verified is None:
        ctx.log("no verification in time; going on")
    ctx.sleep(event.data.get("nap", "200ms"))
    ctx.ingest("signup/welcomed", {"user": user})
    sent = ctx.step("send-welcome", send_welcome, user, event.data.get("blocker"))
    return {"profile": profile, "verified": verified is not None, "sent": sent}
