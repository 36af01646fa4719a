"""The GPU pipeline's sampling rows (default, every frame, key frames) on the bench clips, in one process,
with the engines' load-and-warm-up time: for A/B runs of engine or pipeline settings.

    python3 tools/gpu_pipeline_rows.py WORK_DIR LABEL [CODECS] [COPIES] [decode-all]   (clips built by `vidx bench gpu`)

CODECS: comma-separated (default h264). `decode-all`: NVDEC also decodes the non-reference frames no sample
needs (the decoders skip them by default). Environment:
  ROWS=fps,keyframes   the sampling modes to run (default: all three)
  HANDOFFS=32,8,32,8   run the rows once per RuntimeConfig.decode_handoff, in this order, in this process
                       (an A/B within one warm-up; default: the pipeline's own value once)
  FACE_SEARCH=full     DetectionConfig.face_search (default: guided)
  PERSONS_EVERY=0,0.1  run the rows once per DetectionConfig.persons_every_s, in this order (default: its
                       default once); every-frame rows differ, 2 fps rows (0.5 s apart) do not
  DETECTOR_BATCH=16    RuntimeConfig.detector_batch: frames per detector run (default: the loader's for the GPU's
                       memory and each row's sampling, as a worker for that sampling loads them: one set of
                       engines per distinct batch, all loaded before the first row)
  FRAME_BATCH=32       RuntimeConfig.frame_batch: frames per analysis step (default: the detectors' batch)
  IN_FLIGHT=8,14,21    run the rows once per number of videos in flight (decoders), in this order (default: COPIES)
  STEPS=2,3,4          run the rows once per number of analysis steps in flight, in this order
                       (indexer.pipeline.STEPS_IN_FLIGHT_GPU; default its value once)
  QUEUED=0,1           run the rows once per number of steps submitted beyond those under way, in this order
                       (indexer.pipeline.STEPS_QUEUED_GPU; default its value once)
  COPIES=kernel,engine run the rows once per way the tracking thread copies a step's best face chips and person
                       crops to the host, in this order: `engine` (vidx's: 2-D copies by the copy engine into pinned
                       memory, one wait) or `kernel` (each cut on the device by CuPy and copied with a wait of
                       its own, close to what vidx did before)
  ENGINE_START=quick   RuntimeConfig.engine_start (default: wait, as `vidx bench gpu`); with background the rows
                       start at once, and each row says how many shapes' fastest sessions had taken over
  REPEAT=3             run the rows this many times (default 1): with background, before and after the take-over
  VIDX_ORT_FOLD_SEPARABLE=0  run the face detector's depthwise-separable pairs unfolded
                       (engines.runtime.onnxruntime.FOLD_ENV); FOLD_RULE=all folds every pair (default: the
                       narrowing ones, engines.runtime.onnxruntime.FOLD_RULE)
  VIDX_ORT_CUDA_GRAPHS=0  run without CUDA graphs (engines.runtime.onnxruntime.CUDA_GRAPHS_ENV)
  START_AT=1765000000  after the load, wait until this Unix time before the rows (processes run side by side
                       start their rows together; the summary says when they started)

One JSON line per row on stderr, then one summary line on stdout. The rows are `vidx bench gpu`'s (the same
function, `bench.video.gpu_pipeline_rows`) without its decode-only and CPU rows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np

from bench.video import GpuEngineSets, gpu_pipeline_rows, repeated_clips, rss_mib
from engines.arrays import Region, to_host
from engines.zoo import ModelStore
from indexer import pipeline
from indexer.host_memory import limit_malloc_arenas
from schemas.config import DetectionConfig, EngineStart, FaceSearch, RuntimeConfig, SamplingMode

if os.environ.get("FOLD_RULE") == "all":  # fold every depthwise-separable pair, not only the narrowing ones
    from engines.convert.separable import fold_all
    from engines.runtime import onnxruntime as ort_runtime

    ort_runtime.FOLD_RULE = fold_all
limit_malloc_arenas()  # as a worker does
work, label = Path(sys.argv[1]), sys.argv[2]
codecs = (sys.argv[3] if len(sys.argv) > 3 else "h264").split(",")
copies = int(sys.argv[4]) if len(sys.argv) > 4 else 14
decode_all = len(sys.argv) > 5 and sys.argv[5] == "decode-all"  # NVDEC decodes unsampled non-reference frames too
modes = tuple(cast(SamplingMode, m) for m in os.environ.get("ROWS", "fps,every-frame,keyframes").split(","))
handoffs = [int(h) for h in os.environ.get("HANDOFFS", "0").split(",")]  # 0: the pipeline's default
persons_every = [float(v) for v in os.environ.get("PERSONS_EVERY", str(DetectionConfig.persons_every_s)).split(",")]
runtime = RuntimeConfig(device="gpu", detector_batch=int(os.environ.get("DETECTOR_BATCH", "0")),
                        frame_batch=int(os.environ.get("FRAME_BATCH", "0")),
                        engine_start=cast(EngineStart, os.environ.get("ENGINE_START", "wait")))
copy_ways = os.environ.get("COPIES", "engine").split(",")
product_copies = pipeline.regions_to_host


def kernel_copies(regions: list[Region]) -> list[np.ndarray]:
    return [to_host(image[y0:y1, x0:x1]) for image, y0, y1, x0, x1 in regions]


in_flight_values = [int(v) for v in os.environ.get("IN_FLIGHT", str(copies)).split(",")]
steps_values = [int(v) for v in os.environ.get("STEPS", str(pipeline.STEPS_IN_FLIGHT_GPU)).split(",")]
queued_values = [int(v) for v in os.environ.get("QUEUED", str(pipeline.STEPS_QUEUED_GPU)).split(",")]
t0 = time.perf_counter()
detection = DetectionConfig(face_search=cast(FaceSearch, os.environ.get("FACE_SEARCH", "guided")))
engine_sets = GpuEngineSets(detection, runtime, ModelStore(), lambda line: print(line, file=sys.stderr))
for sampling in modes:  # every set loaded before the first row
    engine_sets(sampling)
out: dict[str, object] = {"label": label, "face_search": detection.face_search, "videos": copies,
                          "load_and_warm_up_s": round(time.perf_counter() - t0, 1),
                          "engines_by_frames_a_step": engine_sets.describe(), "decode_all": decode_all, "rows": []}
if os.environ.get("START_AT"):
    time.sleep(max(0.0, float(os.environ["START_AT"]) - time.time()))
out["rows_started_at"] = round(time.time(), 2)
rows: list[dict[str, object]] = []
for codec in codecs:
    paths = repeated_clips(work, codec, copies)
    for _, in_flight, handoff, every, steps, queued, copy_way in (
            (r, f, h, e, n, q, c) for r in range(int(os.environ.get("REPEAT", "1"))) for f in in_flight_values
            for h in handoffs for e in persons_every for n in steps_values for q in queued_values for c in copy_ways):
        pipeline.STEPS_IN_FLIGHT_GPU = steps
        pipeline.STEPS_QUEUED_GPU = queued
        pipeline.regions_to_host = product_copies if copy_way == "engine" else kernel_copies  # type: ignore[assignment]
        for mode, row in gpu_pipeline_rows(engine_sets, replace(runtime, decode_handoff=handoff), paths, in_flight,
                                           lambda line: print(line, file=sys.stderr),
                                           skip_unsampled=not decode_all, modes=modes,
                                           detection=replace(detection, persons_every_s=every)).items():
            kept = {k: row[k] for k in ("wall_s", "frames_in_video", "frames_decoded", "frames_analysed", "faces",
                                        "video_fps", "decoded_fps", "video_s_per_s", "failed", "stage_s")}
            engines = engine_sets(cast(SamplingMode, mode))
            rows.append({"codec": codec, "in_flight": in_flight, "decode_handoff": handoff or pipeline.DECODE_HANDOFF,
                         "persons_every_s": every, "steps_in_flight": steps, "steps_queued": queued,
                         "copies": copy_way, "mode": mode, "detector_batch": engines.faces.batch_size,
                         "frame_batch": runtime.frame_batch or engines.faces.batch_size, **kept,
                         "ended_s_after_load": round(time.perf_counter() - t0, 1),
                         "shapes_taken_over": engines.shapes_taken_over()})
            print(json.dumps({"label": label, **rows[-1]}), file=sys.stderr, flush=True)
out["rows"] = rows
out["rss_mib"] = round(rss_mib(), 1)
taken_over: dict[str, dict[str, float]] = {}
for batch, engines in engine_sets.by_batch.items():
    for name, session in engines.sessions.items():
        taken: dict[tuple[int, ...], float] = getattr(session, "shapes_taken_over", dict)()
        if taken:
            taken_over[f"{name} ({batch} frames a step)"] = {"x".join(map(str, shape)): round(sec, 2)
                                                              for shape, sec in taken.items()}
out["taken_over_s"] = taken_over
out["cuda_graph_shapes"] = {str(batch): e.cuda_graph_shapes() for batch, e in engine_sets.by_batch.items()}
print(json.dumps(out), flush=True)
