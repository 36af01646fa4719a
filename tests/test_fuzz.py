"""Bounded fuzzing: small valid videos mutated (bit flips, truncations, overwritten and zeroed blocks,
inserted bytes; fixed seed) go through the CPU decoder and the per-video worker. Each case must end in
a result or a clean per-file error (VideoError / a failed outcome) - never another exception, a hang
or a crash. The cases run in a child process, so a hang or a segfault fails the test with the case
named instead of taking pytest down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import badfiles  # tests/badfiles.py
import numpy as np
import pytest

SEED = 20261124
CASES = 20
TIMEOUT_S = 300


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of a file, with a description of what was done."""
    buf = bytearray(data)
    n = len(buf)
    kind = str(rng.choice(["flip", "truncate", "overwrite", "zero", "insert"]))
    if kind == "flip":
        k = int(rng.integers(1, 64))
        for pos in rng.integers(0, n, k):
            buf[int(pos)] ^= 1 << int(rng.integers(0, 8))
        return f"flip {k} bits", bytes(buf)
    if kind == "truncate":
        cut = int(rng.integers(1, n))
        return f"truncate at {cut} of {n}", bytes(buf[:cut])
    start, size = int(rng.integers(0, n)), int(rng.integers(16, 1024))
    if kind == "overwrite":
        buf[start:start + size] = rng.bytes(min(size, n - start))
        return f"overwrite {size} bytes at {start}", bytes(buf)
    if kind == "zero":
        buf[start:start + size] = bytes(min(size, n - start))
        return f"zero {size} bytes at {start}", bytes(buf)
    return f"insert {size} bytes at {start}", bytes(buf[:start] + rng.bytes(size) + buf[start:])


CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from indexer.decode.pyav import PyAVDecoder
    from indexer.errors import VideoError
    from jobs.worker import TaskSpec, VideoWorker
    from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig

    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    worker = VideoWorker(IndexSettings(runtime=RuntimeConfig(device="cpu")), out, cache_dir=None)
    decoder = PyAVDecoder()

    def report(**kw):
        print(json.dumps(kw), flush=True)

    for i, path in enumerate(cases):
        report(case=i, stage="start")
        try:
            frames = sum(len(b) for b in decoder.batches(Path(path), SamplingConfig(mode="every-frame"), 8))
            report(case=i, stage="decoder", result="ok", frames=frames)
        except VideoError as exc:
            report(case=i, stage="decoder", result="error", error=exc.message)
        except Exception as exc:
            report(case=i, stage="decoder", result="bug", error=f"{type(exc).__name__}: {exc}")
        try:
            outcome = worker.process(TaskSpec(video_id=i + 1, path=path, fingerprint="f" * 64, run_key="fuzz"))
            report(case=i, stage="worker", result=outcome.status, error=outcome.error)
        except Exception as exc:
            report(case=i, stage="worker", result="bug", error=f"{type(exc).__name__}: {exc}")
    report(stage="end")
""")


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, Path]]]:
    root = tmp_path_factory.mktemp("fuzz")
    bases = [badfiles.write_video(root / "base_h264.mp4", seconds=1, fps=10),
             badfiles.write_video(root / "base_mpeg4.mkv", codec="mpeg4", seconds=1, fps=10, seed=1),
             badfiles.write_video(root / "base_tail_moov.mp4", faststart=False, seconds=1, fps=10, seed=2)]
    rng = np.random.default_rng(SEED)
    cases = []
    for i in range(CASES):
        base = bases[i % len(bases)]
        what, data = mutate(base.read_bytes(), rng)
        path = root / f"case{i:02d}{base.suffix}"
        path.write_bytes(data)
        cases.append((f"{base.name}: {what}", path))
    return root, cases


def test_mutated_videos_end_in_a_result_or_a_clean_error(fuzz_cases: tuple[Path, list[tuple[str, Path]]],
                                                         cache_dir: Path) -> None:
    root, cases = fuzz_cases
    env = {**os.environ, "VIDX_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-c", CHILD, json.dumps([str(p) for _, p in cases]), str(root / "out")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        stdout, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        code = None
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    started = [e["case"] for e in events if e["stage"] == "start"]
    if code is None or code != 0:
        last = cases[started[-1]][0] if started else "before the first case"
        what = "hung" if code is None else f"crashed (exit {code})"
        pytest.fail(f"the decoder or worker {what} on case {started[-1] if started else '-'} ({last})")
    assert events[-1]["stage"] == "end"
    bugs = [(cases[e["case"]][0], e["stage"], e["error"]) for e in events if e.get("result") == "bug"]
    assert bugs == [], bugs
    results = {(e["case"], e["stage"]): e for e in events if e["stage"] in ("decoder", "worker")}
    assert len(results) == 2 * CASES
    for (_, stage), e in results.items():
        if e["result"] in ("error", "failed"):
            assert e["error"] and len(e["error"]) > 10  # a reason, not an empty string
        else:
            assert e["result"] in ("ok", "done"), (stage, e)
    # Failed cases leave no Parquet part behind.
    failed_ids = {e["case"] + 1 for e in events if e["stage"] == "worker" and e["result"] == "failed"}
    parts = list((root / "out").rglob("*.parquet")) if (root / "out").exists() else []
    assert not [p for p in parts if int(p.name.split("-")[1].split(".")[0]) in failed_ids]
    # The fuzzing is not vacuous: some cases are rejected and some still decode.
    outcomes = {e["result"] for e in results.values()}
    assert {"error", "ok"} <= outcomes, outcomes
