"""Timer claims and pulse pages on tables PostgreSQL has no statistics for (a fresh install, a bulk import):
the two statements issue 11 item 10 rewrote so their plan cannot degrade.

1. ``--timers`` due timers (and as many far ones) inserted in one statement, then ``--claimers`` threads
   each call ``fire_due`` until nothing is due: the wall time to claim them all, and each claimer's share.
2. ``--entities`` entities (each with the event that created it and its stream row, as ingest leaves them),
   then one pulse slot fanned out in pages of ``--chunk``: the wall time of the fan-out.

Both run twice: on never-analysed tables (``autovacuum`` is off on the benchmark server; a production
server's autovacuum gets there later) and after ``ANALYZE`` (``--analyze-only`` / ``--fresh-only`` for one).
No worker: the statements themselves, in this process.

    python benchmarks/fresh_plans.py                        # BENCH_PG_URL, schema garrison_bench_plans
    python benchmarks/fresh_plans.py --timers 2000 --entities 8000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from benchmarks.throughput import pg_url  # noqa: E402
from garrison.client import Garrison  # noqa: E402
from garrison.config import Settings  # noqa: E402
from garrison.core.publisher import NullPublisher  # noqa: E402
from garrison.core.timers import fire_due  # noqa: E402
from garrison.models import ENTITIES, EVENTS, STREAMS, TIMERS  # noqa: E402
from garrison.pulses.fanout import fan_out_chunk, open_slot, save_schedule  # noqa: E402
from garrison.pulses.schedules import PulseSchedule  # noqa: E402

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TENANT = "bench"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timers", type=int, default=2000, help="due timers to claim")
    p.add_argument("--claimers", type=int, default=4, help="concurrent fire_due callers")
    p.add_argument("--limit", type=int, default=500, help="timers per fire_due call (GARRISON_ENGINE_BATCH)")
    p.add_argument("--entities", type=int, default=8000, help="entities of the pulse")
    p.add_argument("--chunk", type=int, default=1000, help="entities per pulse page (GARRISON_PULSE_CHUNK)")
    p.add_argument("--fresh-only", action="store_true", help="only on never-analysed tables")
    p.add_argument("--analyze-only", action="store_true", help="only after ANALYZE")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--pg-schema", default="garrison_bench_plans")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def client_for(args: argparse.Namespace, data_dir: Path) -> Garrison:
    from sqlalchemy import create_engine

    engine = create_engine(args.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{args.pg_schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{args.pg_schema}"'))
    engine.dispose()
    settings = Settings(database_url=pg_url(args.pg_url, args.pg_schema), data_dir=data_dir, tenant=TENANT,
                        log_level="WARNING")
    client = Garrison(settings, publisher=NullPublisher())
    client.init_db()
    return client


def analyze(client: Garrison) -> None:
    with client.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("garrison_timers", "garrison_entities", "garrison_events", "garrison_streams"):
            conn.execute(text(f"ANALYZE {table}"))


def timers(args: argparse.Namespace, client: Garrison, analysed: bool) -> dict[str, Any]:
    def timer(key: str, due: datetime, published: datetime | None) -> dict[str, Any]:
        return {"tenant": TENANT, "automation": "a", "key": key, "name": "t", "due_at": due, "status": "pending",
                "data": {}, "created_at": T0, "published_at": published}

    rows = [timer(f"k{i:07}", T0 - timedelta(seconds=1), T0) for i in range(args.timers)]
    rows += [timer(f"f{i:07}", T0 + timedelta(days=2), None) for i in range(args.timers)]
    with client.db.session() as s:
        s.execute(insert(TIMERS), rows)
    if analysed:
        analyze(client)
    claimed = [0] * args.claimers

    def claim(i: int) -> None:
        while events := fire_due(client.db, TENANT, T0, args.limit):
            claimed[i] += len(events)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(args.claimers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    assert sum(claimed) == args.timers, claimed
    return {"timers": args.timers, "claimers": args.claimers, "seconds": round(seconds, 2), "per_claimer": claimed}


def pulses(args: argparse.Namespace, client: Garrison, analysed: bool) -> dict[str, Any]:
    created = T0 - timedelta(hours=1)
    with client.db.session() as s:
        s.execute(insert(ENTITIES), [
            {"tenant": TENANT, "key": f"e{i:07}", "automation": "inquiry", "state": {"status": "open"}, "version": 1,
             "cursor": 1, "created_at": created, "updated_at": created} for i in range(args.entities)])
        s.execute(insert(EVENTS), [
            {"tenant": TENANT, "key": f"e{i:07}", "seq": 1, "name": "initialInquiry", "data": {},
             "idempotency_key": f"import-{i}", "system": False, "created_at": created} for i in range(args.entities)])
        s.execute(insert(STREAMS), [
            {"tenant": TENANT, "key": f"e{i:07}", "last_seq": 1, "updated_at": created} for i in range(args.entities)])
    if analysed:
        analyze(client)
    spec = PulseSchedule(name="timeouts", automation="inquiry", message="checkTimeout", every=timedelta(minutes=1))
    schedule_id = save_schedule(client.db, TENANT, spec, T0 - timedelta(minutes=5))
    opened = open_slot(client.db, TENANT, schedule_id, T0, T0)
    assert opened is not None
    sent = pages = 0
    t0 = time.perf_counter()
    while (page := fan_out_chunk(client.db, TENANT, opened.id, T0, args.chunk)) is not None:
        sent += len(page)
        pages += 1
    seconds = time.perf_counter() - t0
    assert sent == args.entities, sent
    return {"entities": args.entities, "chunk": args.chunk, "pages": pages, "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    report: dict[str, Any] = {"load_average": [round(x, 2) for x in os.getloadavg()]}
    modes = [m for m in ("fresh", "analysed") if not (m == "fresh" and args.analyze_only)
             and not (m == "analysed" and args.fresh_only)]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for name, run in (("timers", timers), ("pulses", pulses)):
                client = client_for(args, Path(tmp))
                try:
                    report[f"{name}_{mode}"] = run(args, client, mode == "analysed")
                finally:
                    client.db.dispose()
                print(f"{name:7} {mode:9} {json.dumps(report[f'{name}_{mode}'])}", flush=True)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {report['load_average']}, after {report['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
