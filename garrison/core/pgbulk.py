"""PostgreSQL bulk statements: a batch's rows travel as ONE JSON document (``json_to_recordset``).

The portable path (``insert().values([...])`` upserts and insertmanyvalues ``executemany``) makes
SQLAlchemy compile a new statement of hundreds of bind parameters on every call and psycopg re-parse it;
on the engine's and ingest's hot path that was 60 % of the time (benchmarks/README.md). Here each bulk
write is one fixed statement with three parameters, compiled once and cached, whose rows are built with
one ``json.dumps``. Used only when the database is PostgreSQL; SQLite keeps the portable path, and both
are exercised by every backend test. Every statement is scoped by tenant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text

__all__ = [
    "cursors_lock",
    "cursors_update",
    "entities_upsert",
    "ingest",
    "pending_done",
    "versions_insert",
]


def dumps(rows: Any) -> str:
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


# A key becomes pending with its new last sequence (rows in key order, as the streams). The keys the
# caller must publish come back: where nobody has published the key yet (a new row, or one the engine left
# unpublished: ``published_at`` takes this statement's ``:now``), and keys that wait for an automation
# (their new messages may be for automations any worker has; ``published_at`` there is the relay's).
PENDING_UPSERT = """
    INSERT INTO garrison_pending (tenant, key, seq, since, published_at)
    SELECT :tenant, {rows} ORDER BY 2
    ON CONFLICT (tenant, key) DO UPDATE
    SET seq = greatest(garrison_pending.seq, excluded.seq),
        published_at = CASE WHEN garrison_pending.needs IS NULL
                            THEN coalesce(garrison_pending.published_at, excluded.published_at)
                            ELSE garrison_pending.published_at END
    RETURNING key, needs IS NOT NULL OR published_at = :now AS ours
"""
# Ingest in ONE statement: bump each key's stream by its number of events (in key order: the lock order
# of every writer), insert the events with the sequence numbers that gives, and mark the keys pending.
# ``o`` is an event's ordinal among the document's events of its key. An atomic batch (one key) is named
# by its first sequence number.
_INGEST = text("""
    WITH r AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json))
                      AS r(k text, o integer, n text, d jsonb, t text, i text, y boolean, r text) LIMIT :count
    ),
    counts AS (SELECT r.k, count(*) AS c FROM r GROUP BY r.k),
    bumped AS (
        INSERT INTO garrison_streams (tenant, key, last_seq, updated_at)
        SELECT :tenant, c.k, c.c, :now FROM counts AS c ORDER BY c.k
        ON CONFLICT (tenant, key) DO UPDATE
        SET last_seq = garrison_streams.last_seq + excluded.last_seq, updated_at = excluded.updated_at
        RETURNING key, last_seq
    ),
    written AS (
        INSERT INTO garrison_events (tenant, key, seq, name, data, target, idempotency_key, system, batch_id,
                                     batch_size, trace, created_at)
        SELECT :tenant, r.k, b.last_seq - c.c + r.o, r.n, r.d, r.t, r.i, coalesce(r.y, false),
               CASE WHEN :atomic THEN b.last_seq - c.c + 1 END, CASE WHEN :atomic THEN c.c END, r.r, :now
        FROM r JOIN counts AS c ON c.k = r.k JOIN bumped AS b ON b.key = r.k
        RETURNING id, key, seq
    ),
    pended AS ({pending})
    SELECT w.id, w.key, w.seq, coalesce(p.ours, false) AS ours FROM written AS w LEFT JOIN pended AS p ON p.key = w.key
""".replace("{pending}", PENDING_UPSERT.format(rows="b.key, b.last_seq, :now, :now FROM bumped AS b")))
# Keys caught up: their pending rows go, unless an ingest raised the sequence meanwhile (that ingest's row
# lock makes the delete wait for its commit, then re-check). The rows are locked in key order first, as
# every ingest and pulse page locks them, so no two writers can wait for each other in a circle. Returns
# the keys whose row stays: the outer select reads the statement's snapshot, from before the delete. A row
# an ingest makes after this statement is that ingest's to publish.
_PENDING_DONE = text("""
    WITH r AS (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS r(k text, q bigint) LIMIT :n),
    ordered AS (
        SELECT p.key FROM garrison_pending AS p
        WHERE p.tenant = :tenant AND p.key IN (SELECT r.k FROM r) ORDER BY p.key FOR UPDATE
    ),
    gone AS (
        DELETE FROM garrison_pending AS p USING r
        WHERE p.tenant = :tenant AND p.key = r.k AND p.seq <= r.q AND p.key IN (SELECT key FROM ordered)
        RETURNING p.key
    )
    SELECT p.key FROM garrison_pending AS p JOIN r ON p.key = r.k
    WHERE p.tenant = :tenant AND p.key NOT IN (SELECT key FROM gone)
""")
# The per-key lock in one statement: make the keys' cursor rows when missing and lock them all, in key
# order (concurrent batches cannot deadlock), returning each key's cursor. The no-op update is what locks
# an existing row, as SELECT ... FOR UPDATE would, without a second round trip.
_CURSORS_LOCK = text("""
    INSERT INTO garrison_cursors (tenant, key, processed_seq, updated_at)
    SELECT :tenant, r.k, 0, :now FROM json_array_elements_text(CAST(:keys AS json)) AS r(k) ORDER BY r.k
    ON CONFLICT (tenant, key) DO UPDATE SET processed_seq = garrison_cursors.processed_seq
    RETURNING key, processed_seq
""")
_ENTITIES = text("""
    INSERT INTO garrison_entities (tenant, key, automation, state, version, cursor, status, created_at, updated_at)
    SELECT :tenant, r.k, r.a, r.s, r.v, r.c, r.st, :now, :now
    FROM json_to_recordset(CAST(:rows AS json)) AS r(k text, a text, s jsonb, v integer, c bigint, st text)
    ON CONFLICT (tenant, key, automation) DO UPDATE
    SET state = excluded.state, version = excluded.version, cursor = excluded.cursor, status = excluded.status,
        updated_at = excluded.updated_at
""")
# txid: the change feed's commit-safe position (garrison.core.feed): this transaction's id, raised to the
# entity's previous version's when that is higher (one primary-key probe per row).
_VERSIONS = text("""
    INSERT INTO garrison_state_versions (tenant, key, automation, version, state, message, data, event_id, seq,
                                         created_at, txid)
    SELECT :tenant, r.k, r.a, r.v, r.s, r.m, r.d, r.e, r.q, :now,
           greatest(pg_current_xact_id()::text::bigint, (
               SELECT p.txid FROM garrison_state_versions p
               WHERE p.tenant = CAST(:tenant AS varchar) AND p.key = r.k AND p.automation = r.a AND p.version < r.v
               ORDER BY p.version DESC LIMIT 1))
    FROM json_to_recordset(CAST(:rows AS json))
         AS r(k text, a text, v integer, s jsonb, m text, d jsonb, e bigint, q bigint)
""")
# The LIMIT tells the planner exactly how many rows the document holds: without it, on a table PostgreSQL
# has not analysed, it guesses 100 and may scan every cursor of the tenant to hash-join them (25 ms a
# batch at 200,000 keys instead of 0.05 ms).
_CURSORS = text("""
    UPDATE garrison_cursors AS c SET processed_seq = r.q, updated_at = :now
    FROM (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS r(k text, q bigint) LIMIT :n) AS r
    WHERE c.tenant = :tenant AND c.key = r.k
""")


def ingest(
    session: Any, tenant: str, rows: Sequence[dict[str, Any]], now: datetime, *, atomic: bool = False
) -> tuple[list[tuple[int, str, int]], set[str]]:
    """Write events given as ``{k, o, n, d, t?, i?, y?, r?}`` (see :data:`_INGEST`; ``r``: the trace context):
    returns ``(id, key, seq)``
    of each and the keys the caller must publish."""
    params = {"tenant": tenant, "now": now, "rows": dumps(list(rows)), "count": len(rows), "atomic": atomic}
    stored: list[tuple[int, str, int]] = []
    wake: set[str] = set()
    for event_id, key, seq, ours in session.execute(_INGEST, params):
        stored.append((int(event_id), key, int(seq)))
        if ours:
            wake.add(key)
    return stored, wake


def pending_done(session: Any, tenant: str, applied: dict[str, int]) -> set[str]:
    """Remove the pending rows of keys applied up to ``applied[key]``; returns the keys that stay pending."""
    rows = dumps([{"k": k, "q": q} for k, q in applied.items()])
    return set(session.execute(_PENDING_DONE, {"tenant": tenant, "rows": rows, "n": len(applied)}).scalars())


def cursors_lock(session: Any, tenant: str, keys: Sequence[str], now: datetime) -> dict[str, int]:
    """Lock the keys' cursor rows (made when missing) until the transaction ends: ``{key: cursor}``."""
    rows = session.execute(_CURSORS_LOCK, {"tenant": tenant, "now": now, "keys": dumps(sorted(keys))})
    return {k: int(q) for k, q in rows}


def entities_upsert(session: Any, tenant: str, rows: Sequence[dict[str, Any]], now: datetime) -> None:
    """Rows ``{k, a, s, v, c, st}``: key, automation, state, version, cursor, status."""
    session.execute(_ENTITIES, {"tenant": tenant, "now": now, "rows": dumps(list(rows))})


def versions_insert(session: Any, tenant: str, versions: Sequence[dict[str, Any]], now: datetime) -> None:
    rows = [{"k": v["key"], "a": v["automation"], "v": v["version"], "s": v["state"], "m": v["message"],
             "d": v.get("data"), "e": v["event_id"], "q": v["seq"]} for v in versions]
    session.execute(_VERSIONS, {"tenant": tenant, "now": now, "rows": dumps(rows)})


def cursors_update(session: Any, tenant: str, last_seq: dict[str, int], now: datetime) -> None:
    rows = dumps([{"k": k, "q": q} for k, q in last_seq.items()])
    session.execute(_CURSORS, {"tenant": tenant, "now": now, "rows": rows, "n": len(last_seq)})
