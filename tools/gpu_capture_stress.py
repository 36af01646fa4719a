"""Does recording CUDA graphs survive what a GPU worker's other threads do meanwhile?

A GPU worker process once aborted (SIGABRT) soon after its models were ready, with 8 videos claimed
(docs/performance.md, "GPU through the product"): the time when each model shape's second run is recorded as a CUDA
graph (engines/cuda_graphs.py, relaxed capture mode) while decoder threads open NVDEC decoders and model threads may
open sessions for shapes not met before. Suspected: a library synchronising the whole device during another thread's
capture (CUDA error 900, "operation not permitted when stream is capturing") inside C++ code that cannot throw.

Each scenario runs in a fresh process for SECONDS: one thread records graphs without pause (the face embedder at
batch sizes 1-48 in turn, each run twice, so that its second run is recorded; a shape evicted comes back and is
recorded again), beside
  alone      nothing else
  sessions   a thread running the face detector at input sizes not met before (a new ONNX Runtime session and its
             cuDNN set-up each)
  decoders   a thread decoding a bench clip with NVDEC, its decoder opened and closed each time
  both       both threads
with the process's capture gate (engines.cuda_graphs.CAPTURE_GATE) off, or with it on as vidx runs: `both+gate`.
Printed, one JSON line per scenario: the process's exit code, its signal, what each thread did, the captures refused,
the errors raised, and for a process that died what it said last (jobs.processes.last_words).

    python3 tools/gpu_capture_stress.py [SECONDS] [SCENARIO ...]   (defaults: 30, every scenario; needs vidx[gpu] and
                                                                   the models in VIDX_CACHE_DIR; clips in
                                                                   /tmp/vidx-bench, built if missing)
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS: dict[str, tuple[str, ...]] = {"alone": (), "sessions": ("sessions",), "decoders": ("decoders",),
                                         "both": ("sessions", "decoders"), "both+gate": ("sessions", "decoders")}


class _Refusals(logging.Handler):
    """Counts the shapes the runtime ran without a graph because their capture was refused."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "without a CUDA graph" in message:
            self.refused[message.rsplit(": ", 1)[-1][:200]] += 1


def child(scenario: str, seconds: float) -> None:
    """One scenario in this process; prints its JSON line."""
    from indexer.crash_reports import report_crashes

    report_crashes()
    import cupy as cp

    from bench.video import bench_clips
    from engines.cuda_graphs import CAPTURE_GATE
    from engines.runtime.onnxruntime import OnnxRuntimeSession
    from engines.sources import default_cache_dir
    from engines.zoo import ModelStore
    from indexer.decode.nvdec import DECODERS, decode_frames_only

    CAPTURE_GATE.enabled = scenario.endswith("+gate")
    store = ModelStore(default_cache_dir())
    clip = next(c.path for c in bench_clips(Path("/tmp/vidx-bench"), None, lambda _: None) if c.codec == "h264")
    refusals = _Refusals()
    logging.getLogger("engines.runtime.onnxruntime").addHandler(refusals)
    logging.getLogger("engines.runtime.onnxruntime").setLevel(logging.INFO)
    embedder = OnnxRuntimeSession(store.load("face_embedder"), device="cuda", fp16=True)
    detector = OnnxRuntimeSession(store.load("face_detector"), device="cuda", fp16=True)
    done: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    stop = time.monotonic() + seconds

    def record() -> None:
        n = 0
        while time.monotonic() < stop:
            chips = cp.zeros((1 + n % 48, 150, 150, 3), cp.uint8)
            n += 1
            embedder.run({"chips": chips})
            embedder.run({"chips": chips})  # a shape's second run is recorded
            cp.cuda.get_current_stream().synchronize()
            done["record: shape pairs run"] += 1

    def sessions() -> None:
        sizes = [(h, w) for h in range(128, 705, 64) for w in range(128, 1281, 128)]
        for h, w in sizes:
            if time.monotonic() >= stop:
                break
            detector.run({"image": cp.zeros((2, h, w, 3), cp.uint8)})
            cp.cuda.get_current_stream().synchronize()
            done["sessions: new input sizes run"] += 1

    def decoders() -> None:
        while time.monotonic() < stop:
            decode_frames_only(clip)
            DECODERS.clear()  # the decoder closed: the next file opens a new one
            done["decoders: opened, decoded, closed"] += 1

    def guarded(name: str, work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with cp.cuda.Device(0), cp.cuda.Stream(non_blocking=True):
                try:
                    work()
                except Exception as exc:  # reported, not raised: the question is whether the process survives
                    errors[f"{name}: {type(exc).__name__}: {str(exc)[:300]}"] += 1
        return run

    threads = [threading.Thread(target=guarded("record", record), name="record")]
    threads += [threading.Thread(target=guarded(extra, {"sessions": sessions, "decoders": decoders}[extra]),
                                 name=extra) for extra in SCENARIOS[scenario]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"scenario": scenario, "seconds": seconds, "done": dict(done), "errors": dict(errors),
                      "captures_refused": dict(refusals.refused), "captures_postponed": CAPTURE_GATE.postponed,
                      "graphs_held": embedder.cuda_graph_shapes()}), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], float(sys.argv[3]))
        return
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    from gpu_scaling import kept_stderr  # beside this file

    from jobs.processes import last_words

    for scenario in sys.argv[2:] or list(SCENARIOS):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, "--child", scenario, str(seconds)], capture_output=True,
                              text=True, timeout=seconds + 300)
        line: dict[str, Any] = {"scenario": scenario, "rc": proc.returncode,
                                "wall_s": round(time.monotonic() - started, 1)}
        if proc.returncode < 0:
            line["signal"] = signal.Signals(-proc.returncode).name
        result = [row for row in proc.stdout.splitlines() if row.startswith("{")]
        if result:
            line.update(json.loads(result[-1]))
        if proc.returncode != 0:
            line["last_words"] = last_words(proc.stderr)
            line["stderr"] = kept_stderr(proc.stderr)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
