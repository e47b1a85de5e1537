"""Prototypes of the optimizations proposed in benchmarks/README.md, as monkeypatches.

garrison/ is not modified: ``install("unnest+nodata")`` patches this process only (the profiler and
the throughput driver use it; ``benchmarks.patched_worker`` installs ``BENCH_PATCH`` in a worker).
Every patch applies to PostgreSQL only and falls back to the original code elsewhere.

The ``recordset`` prototype (each bulk statement's rows as one JSON document) is merged: it is
``garrison/pgbulk.py``, so "baseline" below includes it.

- ``unnest``: every bulk statement of ingest and of the engine as ONE statement with one array parameter
  per column (``unnest(%s::text[], ...)``); psycopg quotes every array element in Python, so it measured a
  little slower than the merged json_to_recordset statements.
- ``imv``: the one-line alternative for the versions insert (``use_insertmanyvalues_wo_returning``).
- ``nodata``: state versions without a copy of the event's data (the event row has it, by ``event_id``).
- ``async``: ``synchronous_commit = off``. For information: it weakens guarantee 1 on a PostgreSQL crash.
- ``effectbatch``: committed effects published as ``garrison.effects`` tasks of up to 100 ids, performed
  with one read and one update per batch (today: one ``garrison.effect`` task, two transactions and a
  broker round trip per effect). The one-effect task remains for retries with backoff.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Engine as SAEngine

import garrison.core.engine as engine_mod
import garrison.core.ingest as ingest_mod
from garrison.core.db import Database

__all__ = ["PARTS", "install"]

PARTS = ("unnest", "imv", "nodata", "async", "effectbatch")

_ORIGINAL_WRITE_TENANT = ingest_mod._write_tenant
_ORIGINAL_ENGINE_WRITE = engine_mod.Engine._write
_ORIGINAL_EXECUTE_UPSERT = Database.execute_upsert


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _write_effects_and_failures(
    s: Any, effects: list[dict[str, Any]], failures: list[dict[str, Any]], result: Any
) -> None:
    """As today (effects need their ids back, in order: insertmanyvalues with RETURNING does that)."""
    from sqlalchemy import insert

    if failures:
        s.execute(insert(engine_mod.FAILURES), failures)
    if effects:
        effects_table = engine_mod.EFFECTS
        result.effect_ids = list(s.execute(
            insert(effects_table).returning(effects_table.c.id, sort_by_parameter_order=True), effects).scalars())


# -- unnest: one array per column -----------------------------------------------------------------------

U_STREAMS = text("""
    INSERT INTO garrison_streams (tenant, key, last_seq, updated_at)
    SELECT :tenant, u.key, u.n, :now FROM unnest(CAST(:keys AS text[]), CAST(:counts AS bigint[])) AS u(key, n)
    ON CONFLICT (tenant, key) DO UPDATE
    SET last_seq = garrison_streams.last_seq + excluded.last_seq, updated_at = excluded.updated_at
    RETURNING key, last_seq
""")
U_EVENTS = text("""
    INSERT INTO garrison_events (tenant, key, seq, name, data, target, idempotency_key, system, created_at)
    SELECT :tenant, u.key, u.seq, u.name, CAST(u.data AS jsonb), u.target, u.idem, u.system, :now
    FROM unnest(CAST(:keys AS text[]), CAST(:seqs AS bigint[]), CAST(:names AS text[]), CAST(:datas AS text[]),
                CAST(:targets AS text[]), CAST(:idems AS text[]), CAST(:systems AS boolean[]))
         AS u(key, seq, name, data, target, idem, system)
    RETURNING id, key, seq
""")
U_CURSORS_INIT = text("""
    INSERT INTO garrison_cursors (tenant, key, processed_seq, updated_at)
    SELECT :tenant, u.key, 0, :now FROM unnest(CAST(:keys AS text[])) AS u(key)
    ON CONFLICT (tenant, key) DO NOTHING
""")
U_ENTITIES = text("""
    INSERT INTO garrison_entities (tenant, key, automation, state, version, cursor, created_at, updated_at)
    SELECT :tenant, u.key, u.automation, CAST(u.state AS jsonb), u.version, u.cursor, :now, :now
    FROM unnest(CAST(:keys AS text[]), CAST(:automations AS text[]), CAST(:states AS text[]),
                CAST(:versions AS integer[]), CAST(:cursors AS bigint[]))
         AS u(key, automation, state, version, cursor)
    ON CONFLICT (tenant, key, automation) DO UPDATE
    SET state = excluded.state, version = excluded.version, cursor = excluded.cursor, updated_at = excluded.updated_at
""")
U_VERSIONS = text("""
    INSERT INTO garrison_state_versions (tenant, key, automation, version, state, message, data, event_id, seq,
                                         created_at)
    SELECT :tenant, u.key, u.automation, u.version, CAST(u.state AS jsonb), u.message, CAST(u.data AS jsonb),
           u.event_id, u.seq, :now
    FROM unnest(CAST(:keys AS text[]), CAST(:automations AS text[]), CAST(:versions AS integer[]),
                CAST(:states AS text[]), CAST(:messages AS text[]), CAST(:datas AS text[]),
                CAST(:event_ids AS bigint[]), CAST(:seqs AS bigint[]))
         AS u(key, automation, version, state, message, data, event_id, seq)
""")
U_CURSORS = text("""
    UPDATE garrison_cursors AS c SET processed_seq = u.seq, updated_at = :now
    FROM unnest(CAST(:keys AS text[]), CAST(:seqs AS bigint[])) AS u(key, seq)
    WHERE c.tenant = :tenant AND c.key = u.key
""")


def _write_tenant_unnest(
    session: Any, db: Any, tenant: str, events: Sequence[Any], indexes: list[int], results: list[Any],
    now: datetime,
) -> None:
    if db.dialect != "postgresql" or any(events[i].idempotency_key for i in indexes):
        return _ORIGINAL_WRITE_TENANT(session, db, tenant, events, indexes, results, now)
    counts: dict[str, int] = {}
    for i in indexes:
        counts[events[i].key] = counts.get(events[i].key, 0) + 1
    keys = sorted(counts)
    returned = session.execute(
        U_STREAMS, {"tenant": tenant, "now": now, "keys": keys, "counts": [counts[k] for k in keys]}
    ).all()
    next_seq = {k: last - counts[k] + 1 for k, last in returned}
    evs = [events[i] for i in indexes]
    seqs: list[int] = []
    for e in evs:
        seqs.append(next_seq[e.key])
        next_seq[e.key] += 1
    params = {
        "tenant": tenant, "now": now, "keys": [e.key for e in evs], "seqs": seqs, "names": [e.name for e in evs],
        "datas": [_dumps(e.data) for e in evs], "targets": [e.target for e in evs],
        "idems": [e.idempotency_key for e in evs], "systems": [e.system for e in evs],
    }
    ids = {(k, s): event_id for event_id, k, s in session.execute(U_EVENTS, params).all()}
    ingested = ingest_mod.IngestedEvent
    for i, e, seq in zip(indexes, evs, seqs, strict=True):
        results[i] = ingested(id=ids[(e.key, seq)], tenant=tenant, key=e.key, seq=seq, name=e.name, data=e.data,
                              target=e.target, idempotency_key=None, created_at=now)
    return None


def _engine_write_unnest(
    self: Any, s: Any, tenant: str, now: Any, slots: dict[tuple[str, str], Any], versions: list[dict[str, Any]],
    effects: list[dict[str, Any]], failures: list[dict[str, Any]], last_seq: dict[str, int], result: Any,
) -> None:
    if self.db.dialect != "postgresql":
        return _ORIGINAL_ENGINE_WRITE(self, s, tenant, now, slots, versions, effects, failures, last_seq, result)
    dirty = [(name, key, slot) for (name, key), slot in slots.items() if slot.dirty]
    if dirty:
        s.execute(U_ENTITIES, {
            "tenant": tenant, "now": now, "keys": [k for _, k, _ in dirty], "automations": [n for n, _, _ in dirty],
            "states": [_dumps(sl.state) for _, _, sl in dirty], "versions": [sl.version for _, _, sl in dirty],
            "cursors": [sl.cursor for _, _, sl in dirty],
        })
    if versions:
        s.execute(U_VERSIONS, {
            "tenant": tenant, "now": now, "keys": [v["key"] for v in versions],
            "automations": [v["automation"] for v in versions], "versions": [v["version"] for v in versions],
            "states": [_dumps(v["state"]) for v in versions], "messages": [v["message"] for v in versions],
            "datas": [None if v.get("data") is None else _dumps(v["data"]) for v in versions],
            "event_ids": [v["event_id"] for v in versions], "seqs": [v["seq"] for v in versions],
        })
    _write_effects_and_failures(s, effects, failures, result)
    s.execute(U_CURSORS, {"tenant": tenant, "now": now, "keys": list(last_seq), "seqs": list(last_seq.values())})
    return None


def _execute_upsert_unnest(
    self: Database, session: Any, table: Any, rows: Sequence[dict[str, Any]], index: Sequence[str],
    update: Any = None, returning: Sequence[Any] = (),
) -> list[Any]:
    if table is engine_mod.CURSORS and update is None and not returning and self.dialect == "postgresql" and rows:
        session.execute(U_CURSORS_INIT, {"tenant": rows[0]["tenant"], "now": rows[0]["updated_at"],
                                         "keys": [r["key"] for r in rows]})
        return []
    return _ORIGINAL_EXECUTE_UPSERT(self, session, table, rows, index, update, returning)


# -- the smaller ones -------------------------------------------------------------------------------------


def _without_version_data(original: Any) -> Any:
    def write(self: Any, s: Any, tenant: str, now: Any, slots: Any, versions: list[dict[str, Any]],
              *rest: Any) -> None:
        for v in versions:
            v["data"] = None
        return original(self, s, tenant, now, slots, versions, *rest)  # type: ignore[no-any-return]

    return write


def _synchronous_commit_off(dbapi_connection: Any, _record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("psycopg"):
        with dbapi_connection.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_connection.commit()


# -- effectbatch: listeners performed in batches -------------------------------------------------------

EFFECT_BATCH = 100
EFFECTS_TASK = "garrison.effects"


def perform_effects(client: Any, tenant: str, effect_ids: Sequence[int]) -> list[int]:
    """Perform a batch of committed effects: ONE read, each ``perform`` in id order, ONE update marking the
    ones that ran as done. Returns the ids that raised, for the caller to hand to the retrying one-effect
    task. At least once, as today: a worker killed mid-batch leaves them pending or dispatched, and the
    relay publishes them again (with the same idempotency keys)."""
    from sqlalchemy import select, update

    from garrison.core.contract import EffectContext, EffectSpec

    effects = engine_mod.EFFECTS
    db = client.db
    with db.session() as s:
        rows = s.execute(
            select(effects).where(effects.c.tenant == tenant, effects.c.id.in_(list(effect_ids)))
            .order_by(effects.c.id)
        ).mappings().all()
    done: list[int] = []
    failed: list[int] = []
    for row in rows:
        if row["status"] == "done":
            continue
        ctx = EffectContext(tenant=tenant, automation=row["automation"], key=row["key"], effect_id=row["id"],
                            idempotency_key=f"{tenant}:effect:{row['id']}", client=client)
        try:
            client.registry.get(row["automation"]).perform(EffectSpec(row["kind"], row["payload"]), ctx)
        except Exception:  # noqa: BLE001 - handed to the retrying task, which records the error
            failed.append(row["id"])
        else:
            done.append(row["id"])
    if done:
        with db.session() as s:
            s.execute(
                update(effects).where(effects.c.tenant == tenant, effects.c.id.in_(done))
                .values(status="done", done_at=client.clock.now(), attempts=effects.c.attempts + 1, error=None)
            )
    return failed


def _publish_effects_batched(self: Any, tenant: str, effect_ids: Sequence[int], labels: Any = None) -> None:
    with self.app.producer_or_acquire() as producer:
        for start in range(0, len(effect_ids), EFFECT_BATCH):
            chunk = list(effect_ids[start : start + EFFECT_BATCH])
            self.app.send_task(EFFECTS_TASK, args=[tenant, chunk], producer=producer,
                               argsrepr=f"tenant={tenant} effects={len(chunk)}")


def register_effects_task(app: Any) -> None:
    """The batch task, on the worker's app (benchmarks.patched_worker does it when ``effectbatch`` is on)."""

    @app.task(name=EFFECTS_TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def effects(tenant: str, effect_ids: list[int]) -> int:
        from garrison.tasks import client
        from garrison.tasks import effect as one_effect

        failed = perform_effects(client(), tenant, effect_ids)
        for effect_id in failed:  # these keep today's per-effect retries with backoff
            one_effect.apply_async(args=[tenant, effect_id], countdown=1)
        return len(effect_ids) - len(failed)


# -- installing -----------------------------------------------------------------------------------------


_MISSING = object()


@contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    # A class's own attribute (not an inherited one, nor a bound method), so it can be put back exactly.
    old = obj.__dict__.get(name, _MISSING) if isinstance(obj, type) else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


@contextmanager
def _listening(target: Any, name: str, fn: Any) -> Iterator[None]:
    event.listen(target, name, fn)
    try:
        yield
    finally:
        event.remove(target, name, fn)


def install(spec: str) -> ExitStack:
    """Install the parts of ``spec`` (``"unnest+nodata"``; ``""`` or ``"baseline"``: nothing).

    Returns an ExitStack that uninstalls them; ``async`` only affects connections opened afterwards.
    """
    stack = ExitStack()
    for part in (p for p in spec.split("+") if p and p != "baseline"):
        if part == "unnest":
            stack.enter_context(_patched(ingest_mod, "_write_tenant", _write_tenant_unnest))
            stack.enter_context(_patched(engine_mod.Engine, "_write", _engine_write_unnest))
            stack.enter_context(_patched(Database, "execute_upsert", _execute_upsert_unnest))
        elif part == "imv":
            stack.enter_context(_patched(PGDialect_psycopg, "use_insertmanyvalues_wo_returning", True))
        elif part == "nodata":
            current = engine_mod.Engine.__dict__["_write"]
            stack.enter_context(_patched(engine_mod.Engine, "_write", _without_version_data(current)))
        elif part == "effectbatch":
            from garrison.tasks.publisher import CeleryPublisher

            stack.enter_context(_patched(CeleryPublisher, "publish_effects", _publish_effects_batched))
        elif part == "async":
            stack.enter_context(_listening(SAEngine, "connect", _synchronous_commit_off))
        else:
            stack.close()
            raise ValueError(f"unknown optimization {part!r}; known: {', '.join(PARTS)}")
    return stack
