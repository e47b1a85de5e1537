"""``celery -A benchmarks.patched_worker worker``: garrison's worker with the optimizations named in
``BENCH_PATCH`` (benchmarks/proposals.py) installed, for ``throughput.py --patch``."""

from __future__ import annotations

import os

from benchmarks.proposals import install

# Kept referenced: an uninstall runs when the stack is closed (or collected with its generators).
_installed = install(os.environ.get("BENCH_PATCH", ""))

from garrison.tasks import app  # noqa: E402

if "effectbatch" in os.environ.get("BENCH_PATCH", "").split("+"):
    from benchmarks.proposals import register_effects_task

    register_effects_task(app)

__all__ = ["app"]
