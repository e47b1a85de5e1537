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
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text

__all__ = ["cursors_init", "cursors_update", "entities_upsert", "events_insert", "streams_bump", "versions_insert"]


def dumps(rows: Any) -> str:
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


_STREAMS = text("""
    INSERT INTO garrison_streams (tenant, key, last_seq, updated_at)
    SELECT :tenant, r.k, r.n, :now FROM json_to_recordset(CAST(:rows AS json)) AS r(k text, n bigint)
    ORDER BY r.k
    ON CONFLICT (tenant, key) DO UPDATE
    SET last_seq = garrison_streams.last_seq + excluded.last_seq, updated_at = excluded.updated_at
    RETURNING key, last_seq
""")
_EVENTS = text("""
    INSERT INTO garrison_events (tenant, key, seq, name, data, target, idempotency_key, system, trace, created_at)
    SELECT :tenant, r.k, r.s, r.n, r.d, r.t, r.i, coalesce(r.y, false), r.r, :now
    FROM json_to_recordset(CAST(:rows AS json))
         AS r(k text, s bigint, n text, d jsonb, t text, i text, y boolean, r text)
    RETURNING id, key, seq
""")
_CURSORS_INIT = text("""
    INSERT INTO garrison_cursors (tenant, key, processed_seq, updated_at)
    SELECT :tenant, r.k, 0, :now FROM json_array_elements_text(CAST(:keys AS json)) AS r(k)
    ON CONFLICT (tenant, key) DO NOTHING
""")
_ENTITIES = text("""
    INSERT INTO garrison_entities (tenant, key, automation, state, version, cursor, created_at, updated_at)
    SELECT :tenant, r.k, r.a, r.s, r.v, r.c, :now, :now
    FROM json_to_recordset(CAST(:rows AS json)) AS r(k text, a text, s jsonb, v integer, c bigint)
    ON CONFLICT (tenant, key, automation) DO UPDATE
    SET state = excluded.state, version = excluded.version, cursor = excluded.cursor, updated_at = excluded.updated_at
""")
_VERSIONS = text("""
    INSERT INTO garrison_state_versions (tenant, key, automation, version, state, message, data, event_id, seq,
                                         created_at)
    SELECT :tenant, r.k, r.a, r.v, r.s, r.m, r.d, r.e, r.q, :now
    FROM json_to_recordset(CAST(:rows AS json))
         AS r(k text, a text, v integer, s jsonb, m text, d jsonb, e bigint, q bigint)
""")
_CURSORS = text("""
    UPDATE garrison_cursors AS c SET processed_seq = r.q, updated_at = :now
    FROM json_to_recordset(CAST(:rows AS json)) AS r(k text, q bigint)
    WHERE c.tenant = :tenant AND c.key = r.k
""")


def streams_bump(session: Any, tenant: str, counts: dict[str, int], now: datetime) -> dict[str, int]:
    """Add ``counts[key]`` to each key's ``last_seq`` (creating the stream); returns the new last_seq.
    Rows are locked in key order, as on the portable path, so concurrent ingests cannot deadlock."""
    rows = dumps([{"k": k, "n": counts[k]} for k in sorted(counts)])
    return {k: int(last) for k, last in session.execute(_STREAMS, {"tenant": tenant, "now": now, "rows": rows})}


def events_insert(
    session: Any, tenant: str, rows: Sequence[dict[str, Any]], now: datetime
) -> dict[tuple[str, int], int]:
    """Insert events given as ``{k, s, n, d, t?, i?, y?, r?}``; returns their ids by (key, seq), which is unique."""
    result = session.execute(_EVENTS, {"tenant": tenant, "now": now, "rows": dumps(list(rows))})
    return {(k, int(s)): int(i) for i, k, s in result}


def cursors_init(session: Any, tenant: str, keys: Iterable[str], now: datetime) -> None:
    session.execute(_CURSORS_INIT, {"tenant": tenant, "now": now, "keys": dumps(list(keys))})


def entities_upsert(session: Any, tenant: str, rows: Sequence[dict[str, Any]], now: datetime) -> None:
    """Rows ``{k, a, s, v, c}``: key, automation, state, version, cursor."""
    session.execute(_ENTITIES, {"tenant": tenant, "now": now, "rows": dumps(list(rows))})


def versions_insert(session: Any, tenant: str, versions: Sequence[dict[str, Any]], now: datetime) -> None:
    rows = [{"k": v["key"], "a": v["automation"], "v": v["version"], "s": v["state"], "m": v["message"],
             "d": v.get("data"), "e": v["event_id"], "q": v["seq"]} for v in versions]
    session.execute(_VERSIONS, {"tenant": tenant, "now": now, "rows": dumps(rows)})


def cursors_update(session: Any, tenant: str, last_seq: dict[str, int], now: datetime) -> None:
    rows = dumps([{"k": k, "q": q} for k, q in last_seq.items()])
    session.execute(_CURSORS, {"tenant": tenant, "now": now, "rows": rows})
