"""Query plans as PostgreSQL really runs them, for tests that a statement's plan cannot degrade on tables it
has no statistics for (a fresh install, a bulk import, autovacuum behind).

:func:`explained` runs ``EXPLAIN (ANALYZE, FORMAT JSON)`` of every statement a block executes, just before
it runs for real, in a savepoint rolled back at once: the plan is the one the statement gets, with the
actual number of times each node ran, and the data is left as the statement finds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text

from garrison.client import Garrison

__all__ = ["Explained", "explained", "never_analysed", "repeated_nodes"]


@dataclass(frozen=True)
class Explained:
    statement: str
    plan: dict[str, Any]

    def nodes(self) -> Iterator[dict[str, Any]]:
        stack = [self.plan["Plan"]]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.get("Plans", []))


@contextmanager
def explained(client: Garrison) -> Iterator[list[Explained]]:
    found: list[Explained] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if executemany or head not in ("SELECT", "UPDATE", "WITH", "INSERT", "DELETE"):
            return
        cursor.execute("SAVEPOINT garrison_plan_check")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        [[plan]] = [row[0] for row in cursor.fetchall()]
        cursor.execute("ROLLBACK TO SAVEPOINT garrison_plan_check")
        found.append(Explained(statement, plan))

    event.listen(client.db.engine, "before_cursor_execute", before)
    try:
        yield found
    finally:
        event.remove(client.db.engine, "before_cursor_execute", before)


def repeated_nodes(explained: Explained) -> list[str]:
    """Nodes that ran once per row of another: a locking or limiting sub-select (LockRows, Limit, a
    SubPlan), a sequential scan, or an index scan that reads a range (over 50 rows a time) rather than
    probing a key, executed more than once. An index probe per row is how a nested loop joins, and is
    fine."""
    bad = []
    for node in explained.nodes():
        loops = node.get("Actual Loops", 1)
        kind = node["Node Type"]
        ranged = kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan") and node.get("Actual Rows", 0) > 50
        if loops > 1 and (kind in ("LockRows", "Limit", "Seq Scan") or ranged
                          or node.get("Parent Relationship") == "SubPlan"):
            bad.append(f"{kind} on {node.get('Relation Name', '-')} ({node.get('Index Name', 'no index')}) "
                       f"ran {loops} times")
    return bad


def never_analysed(client: Garrison, table: str) -> bool:
    """Whether PostgreSQL has no statistics for ``table`` (never analysed, by hand or by autovacuum)."""
    with client.db.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL FROM pg_stat_user_tables WHERE relname = :t"
        ), {"t": table}).scalar()
    return bool(row)
