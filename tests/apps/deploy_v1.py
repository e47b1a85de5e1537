"""The old version of a deployment: ``ledger`` and ``legacy`` take every ``app/moved`` event. Its
successor (``deploy_v2``) keeps ``ledger``, drops ``legacy`` and adds ``audit``: a rolling deploy runs both."""

from __future__ import annotations

from typing import Any

from garrison import Machine

ledger = Machine("ledger", on={"app/moved": "record"})
legacy = Machine("legacy", on={"app/moved": "record"})


def record(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    """Records the order in which the messages of a key were applied."""
    return {"seen": [*(state or {}).get("seen", []), data["n"]]}


ledger.reducer(record)
legacy.reducer(record)
