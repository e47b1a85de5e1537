"""The automation the worker runs (GARRISON["AUTOMATIONS"]): per user, the emails they submitted.

It imports nothing from Django, so a plain `garrison worker` can run it too.
"""

from __future__ import annotations

from typing import Any

from garrison import Machine

emails = Machine("emails", on={"app/email.submitted": "submitted"})


@emails.reducer
def submitted(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    state = state or {"count": 0, "emails": []}
    return {"count": state["count"] + 1, "emails": [*state["emails"], data["email"]]}
