"""Runs the python blocks of one docs page in order, in one namespace (see tests/test_docs.py).

    python tests/docs_runner.py BLOCKS.json

BLOCKS.json is a list of ``{"where": "docs/page.md:12", "code": "..."}``. A block that raises stops the run
with exit 1 and names the block; the traceback's lines point into the page."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(path: str) -> int:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in json.loads(Path(path).read_text()):
        try:
            exec(compile(block["code"], block["where"], "exec"), namespace)
        except BaseException:  # noqa: BLE001 - any failure of a snippet is reported with its block
            print(f"the block at {block['where']} failed:", file=sys.stderr)
            traceback.print_exc()
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
