"""The new version of the deployment of ``deploy_v1``: keeps ``ledger``, adds ``audit``, drops ``legacy``."""

from __future__ import annotations

from typing import Any

from garrison import Machine

ledger = Machine("ledger", on={"app/moved": "record"})
audit = Machine("audit", on={"app/moved": "record"})


def record(prefs: dict[str, Any], state: Any, data: dict[str, Any]) -> Any:
    return {"seen": [*(state or {}).get("seen", []), data["n"]]}


ledger.reducer(record)
audit.reducer(record)
