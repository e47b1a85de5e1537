"""``make bench``: every benchmark, one after the other.

1. throughput.py: garrison end-to-end against raw Celery (PostgreSQL + Redis, real workers).
2. profile_engine.py: where ingest_many and Engine.process spend their time, and each proposal's gain.
3. timers.py: 100,000 far + 10,000 near durable timers, one worker: memory, lateness, duplicates, losses.
4. journeys.py: 5,000 users through an onboarding-like journey, garrison next to a naive raw-Celery version.
5. pulses.py: a checkTimeout pulse over 100,000 entities, garrison next to one raw Celery task per entity.

Arguments are handed to throughput.py (e.g. ``--repeat 1``, ``--embedded``). ``--quick`` runs only
step 1, once; ``--no-profile`` skips step 2; ``--no-timers``, ``--no-journeys`` and ``--no-pulses``
skip 3, 4 and 5 (which need PostgreSQL + Redis, so ``--embedded`` skips them too).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import journeys, profile_engine, pulses, throughput, timers  # noqa: E402


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    no_profile = "--no-profile" in argv or quick
    no_timers = "--no-timers" in argv or quick
    no_journeys = "--no-journeys" in argv or quick
    no_pulses = "--no-pulses" in argv or quick
    args = [a for a in argv if a not in ("--quick", "--no-profile", "--no-timers", "--no-journeys", "--no-pulses")]
    embedded = "--embedded" in args
    if not embedded:
        missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable(port)]
        if missing:
            print(f"{' and '.join(missing)} not reachable on 127.0.0.1: run `make services` "
                  "(or `python benchmarks/run.py --embedded` for the SQLite figures)", file=sys.stderr)
            return 2
    if quick:
        args = ["--repeat", "1", *args]
    throughput.main(args)
    if not no_profile and not embedded:
        print("\n" + "=" * 100 + "\n")
        profile_engine.main([])
    if not no_timers and not embedded:
        print("\n" + "=" * 100 + "\n")
        timers.main([])
    if not no_journeys and not embedded:
        print("\n" + "=" * 100 + "\n")
        journeys.main([])
    if not no_pulses and not embedded:
        print("\n" + "=" * 100 + "\n")
        pulses.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
