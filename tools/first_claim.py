"""Seconds from `vidx index` starting to its first video claimed, on the CPU, for one or more source trees of vidx,
one fresh command per row, the trees alternating.

    python tools/first_claim.py ARCHIVE RUNS TREE [TREE ...]    (each command: python -m vidx index ARCHIVE
                                                                 --device cpu --out OUT --json, PYTHONPATH=TREE)

Prints one JSON line per command: the tree, its exit status, the first claim (the SQL index's earliest claimed_at,
against the time the command was started) and the whole command's seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gpu_scaling import work_window  # beside this file: the SQL index's claim and finish times


def main() -> None:
    archive, runs, trees = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    out = os.path.join(tempfile.mkdtemp(prefix="vidx-first-claim-"), "out")
    for _ in range(runs):
        for tree in trees:
            shutil.rmtree(out, ignore_errors=True)
            started, t0 = datetime.now(UTC), time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "vidx", "index", archive, "--device", "cpu", "--out", out,
                                   "--json"], capture_output=True, text=True, cwd=tree,
                                  env={**os.environ, "PYTHONPATH": tree})
            wall = time.monotonic() - t0
            claimed = work_window(Path(out) / "index.sqlite")[3]
            print(json.dumps({"tree": tree, "rc": proc.returncode,
                              "first_claim_s": round((claimed - started).total_seconds(), 2),
                              "command_s": round(wall, 2)}), flush=True)


if __name__ == "__main__":
    main()
