"""Where the GPU pipeline's host time goes in the every-frame row: py-spy samples of every thread, by role.

    python3 tools/gpu_host_profile.py WORK_DIR OUT.json   (bench clips in WORK_DIR, built by `vidx bench gpu`;
                                                           py-spy on the PATH)

Engines load once (the fastest sessions); then:
1. two every-frame passes over 28 copies of the H.264 bench clips, each sampled by `py-spy record --threads
   --nonblocking` for 10 s from 3 s in: first every thread on a CPU, then (`--gil`) the thread holding the
   interpreter's lock. Samples are summed by thread role (model threads, decoder threads, the calling thread
   that gathers and tracks) and by function, as cores busy (1.0: one core all the time);
2. the CUDA timeline of tools/gpu_timeline.py over 6 s of the same row, and the models alone;
3. the every-frame row on 14 videos with 1 and 3 analysis steps in flight (the default is 2);
4. four alternating default-sampling passes over 42 videos (14 in flight) with decoders borrowing CUDA
   streams from their own pool (as vidx does) and from the model steps' pool (as it did before).
Each part adds its results to OUT.json as it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_timeline

from bench.video import repeated_clips, run_pipeline
from engines import streams
from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer import pipeline
from indexer.decode import nvdec
from indexer.pipeline import VideoIndexer, VideoTask
from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig

SAMPLE_S = 10
RATE = 100


def thread_role(stack: str) -> str:
    if "_decode (" in stack:
        return "decoder threads"
    if "_infer" in stack:
        return "model threads"
    if "_work (" in stack:
        return "set-up thread"
    if "index_many" in stack:
        return "calling thread (gather, track)"
    return "other"


def summarise_samples(raw: Path) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks as cores busy by role, with each role's top functions: self (the
    innermost frame) and inclusive (vidx's and ONNX Runtime's frames anywhere in the stack)."""
    per_role: Counter[str] = Counter()
    self_by: dict[str, Counter[str]] = defaultdict(Counter)
    incl_by: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n, frames = int(count), stack.split(";")
        role = thread_role(stack)
        per_role[role] += n
        self_by[role][frames[-1][:120]] += n
        for f in dict.fromkeys(frames):
            if any(s in f for s in ("engines/", "indexer/", "onnxruntime")):
                incl_by[role][f[:120]] += n
    total = SAMPLE_S * RATE
    return {"cores_busy_by_role": {r: round(c / total, 3) for r, c in per_role.most_common()},
            "self_top": {r: [(f, round(c / total, 3)) for f, c in self_by[r].most_common(18)] for r in per_role},
            "inclusive_top": {r: [(f, round(c / total, 3)) for f, c in incl_by[r].most_common(25)] for r in per_role}}


def sampled_pass(engines: Any, settings: IndexSettings, paths: list[Path], gil: bool, py_spy: str) -> dict[str, Any]:
    raw = Path(f"/tmp/vidx-py-spy-{'gil' if gil else 'cpu'}.txt")
    cmd = [py_spy, "record", "--pid", str(os.getpid()), "--duration", str(SAMPLE_S), "--rate", str(RATE),
           "--format", "raw", "--output", str(raw), "--nonblocking", "--threads", *(["--gil"] if gil else [])]
    indexer = VideoIndexer(engines, settings, nvdec.NvdecDecoder())
    state: dict[str, Any] = {"proc": None, "frames": 0}
    started = time.perf_counter()

    def progress(_task: VideoTask, n: int, _ts: float) -> None:
        state["frames"] += n
        if state["proc"] is None and time.perf_counter() - started > 3:
            state["proc"] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    list(indexer.index_many([VideoTask(p, i + 1, "p") for i, p in enumerate(paths)], on_progress=progress))
    wall = time.perf_counter() - started
    if state["proc"] is not None:
        state["proc"].communicate(timeout=60)
    row: dict[str, Any] = {"sampled": "GIL holder" if gil else "on a CPU", "wall_s": round(wall, 2),
                           "frames_per_s": round(state["frames"] / wall, 1),
                           "stage_s": {k: round(v, 2) for k, v in indexer.timings.items()}}
    if raw.exists():
        row.update(summarise_samples(raw))
    return row


def main() -> None:
    work, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not on the PATH (pip install py-spy)")
    settings = IndexSettings(sampling=SamplingConfig(mode="every-frame"),
                             runtime=RuntimeConfig(device="gpu", engine_start="wait"))
    started = time.perf_counter()
    engines = load_engines(settings.detection, settings.runtime, store=ModelStore(),
                           sampling_mode=settings.sampling.mode)
    result: dict[str, Any] = {"engines_ready_s": round(time.perf_counter() - started, 1),
                              "engines": engines.describe()}
    paths = repeated_clips(work, "h264", 28)

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=1))

    for gil in (False, True):
        result["py_spy_gil" if gil else "py_spy_cpu"] = sampled_pass(engines, settings, paths, gil, py_spy)
        save()
    trace_dir = Path("/tmp/vidx-timeline")
    trace_dir.mkdir(exist_ok=True)
    result["timeline_models_alone"] = gpu_timeline.models_alone(engines, paths[0], trace_dir)
    result["timeline_pipeline"] = gpu_timeline.pipeline_window(engines, settings, paths, 4.0, 6.0, trace_dir)
    save()
    rows = []
    for steps in (1, 3):
        pipeline.STEPS_IN_FLIGHT_GPU = steps
        indexer = VideoIndexer(engines, settings, nvdec.NvdecDecoder())
        row = run_pipeline(indexer, paths[:14], indexer.videos_in_flight)
        rows.append({"steps_in_flight": steps, "frames_per_s": round(row["frames_analysed"] / row["wall_s"], 1),
                     **{k: row[k] for k in ("faces", "wall_s", "stage_s")}})
    pipeline.STEPS_IN_FLIGHT_GPU = 2
    result["steps_in_flight"] = rows
    save()
    own_pool = nvdec.DECODER_STREAMS
    default = IndexSettings(runtime=RuntimeConfig(device="gpu", engine_start="wait"))
    passes = []
    for pools in ("decoders' own", "shared", "decoders' own", "shared"):
        nvdec.DECODERS.clear()  # decoders give their streams back to the pool they came from
        nvdec.DECODER_STREAMS = own_pool if pools == "decoders' own" else streams.STREAMS
        row = run_pipeline(VideoIndexer(engines, default, nvdec.NvdecDecoder()), repeated_clips(work, "h264", 42), 14)
        passes.append({"stream_pools": pools, "video_fps": row["video_fps"], "wall_s": row["wall_s"]})
    nvdec.DECODERS.clear()
    nvdec.DECODER_STREAMS = own_pool
    result["stream_pools"] = passes
    save()


if __name__ == "__main__":
    main()
