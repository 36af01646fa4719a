"""What one analysis step's models cost on their own, against what the pipeline gets: the gap is host work.

    python3 tools/gpu_step_costs.py WORK_DIR micro   (bench clips in WORK_DIR, built by `vidx bench gpu`)
    python3 tools/gpu_step_costs.py WORK_DIR rows    (every-frame row, 14 clips, per steps-in-flight / batch)

`micro`: 32 frames of a bench clip (every 5th) on the GPU; the median of 8 synchronised runs of the person
detector, the face detector (guided with the frames' person boxes, full, its coarse levels alone, the
finest level whole in runs of 4 frames), alignment and embedding, then a cProfile of five detector passes.
`rows`: the pipeline's every-frame row with 2 and 4 steps in flight and with 64-frame steps, engines
loaded once (watch `nvidia-smi dmon -s u` beside it for how busy the SMs are).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import cupy as cp
import numpy as np

from bench.video import gpu_pipeline_rows, repeated_clips
from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer import pipeline
from schemas.config import DetectionConfig, RuntimeConfig


def timed(name: str, fn: Callable[[], Any], n: int = 8) -> Any:
    out = fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    print(json.dumps({"what": name, "ms_per_32": round(ms, 2), "fps": round(32000 / ms, 1)}), flush=True)
    return out


def micro(engines: Any, clip: Path) -> None:
    frames = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 5 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 32:
                break
    dev = [cp.asarray(f) for f in frames]
    persons = timed("persons", lambda: engines.persons.detect(dev))
    faces_engine = engines.faces
    regions = [faces_engine.head_regions(p.boxes, 1080, 1920) for p in persons]
    print(json.dumps({"people_per_frame": float(np.mean([len(p) for p in persons])),
                      "head_regions_per_frame": float(np.mean([len(r) for r in regions]))}))
    faces = timed("faces_guided", lambda: faces_engine.detect(dev, regions))
    timed("faces_full", lambda: faces_engine.detect(dev, None))
    levels = faces_engine.plan(1080, 1920)
    timed("faces_coarse_levels", lambda: faces_engine._level_candidates(cp, dev, levels[1:]))
    timed("faces_finest_level_whole_4_per_run",
          lambda: [faces_engine._level_candidates(cp, dev[i:i + 4], levels[:1], pad_to=4) for i in range(0, 32, 4)])
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(5):
        faces_engine.detect(dev, regions)
        engines.persons.detect(dev)
    cp.cuda.Device().synchronize()
    profile.disable()
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(18)
    print(buf.getvalue())
    found = [(f, k) for f, d in enumerate(faces) for k in range(len(d))]
    if found:
        kps = np.stack([faces[f].keypoints[k] for f, k in found])
        chips = timed("align", lambda: engines.embedder.chips(dev, [f for f, _ in found], kps))
        timed("embed", lambda: engines.embedder.embed_chips(chips))


def rows(engines: Any, work: Path, runtime: RuntimeConfig, detection: DetectionConfig) -> None:
    paths = repeated_clips(work, "h264", 14)
    for overlap, batch in [(2, 32), (4, 32), (2, 64)]:
        pipeline.STEPS_IN_FLIGHT_GPU = overlap
        row = gpu_pipeline_rows(engines, replace(runtime, frame_batch=batch, detector_batch=batch), paths, 14,
                                lambda line: None, modes=("every-frame",), detection=detection)["every-frame"]
        print(json.dumps({"steps_in_flight": overlap, "frame_batch": batch, "video_fps": row["video_fps"],
                          "wall_s": row["wall_s"], "stage_s": row["stage_s"]}), flush=True)


def main() -> None:
    work, what = Path(sys.argv[1]), sys.argv[2]
    runtime, detection = RuntimeConfig(device="gpu", engine_start="wait"), DetectionConfig()
    t0 = time.perf_counter()
    engines = load_engines(detection, runtime, store=ModelStore())
    print(json.dumps({"load_and_warm_up_s": round(time.perf_counter() - t0, 1)}), flush=True)
    if what == "micro":
        micro(engines, sorted(work.glob("bench_h264_*.mp4"))[0])
    else:
        rows(engines, work, runtime, detection)


if __name__ == "__main__":
    main()
