"""What the GPU pipeline's threads cost each other, in one process: NVDEC decoder threads alone, the models
alone, both at once, then the every-frame pipeline row, each with a GIL probe beside it.

    python3 tools/gpu_contention.py WORK_DIR [PHASES]   (bench clips in WORK_DIR, built by `vidx bench gpu`)
    py-spy record -r 100 --gil -f raw -o gil.txt -- python3 tools/gpu_contention.py WORK_DIR   (who holds the GIL)

PHASES: any of a (14 decoder threads, every frame, NV12 -> RGB included), b (2 threads running the person and
face detectors on one 32-frame 1080p batch, each on a CUDA stream of its own, as the pipeline's model threads
do), c (a and b at once), d (the pipeline's every-frame row on 14 clips); default abcd, 12 s each for a-c.
The probe is a thread that sleeps 0.5 ms in a loop: how late it wakes is how long a thread that gave up the
GIL waits to get it back. One JSON line per phase.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.video import gpu_pipeline_rows, repeated_clips
from engines.detectors import FaceDetector
from engines.loader import Engines, load_engines
from engines.streams import STREAMS
from engines.zoo import ModelStore
from indexer.decode.nvdec import NvdecDecoder
from schemas.config import DetectionConfig, RuntimeConfig, SamplingConfig

DECODERS = 14
MODEL_THREADS = 2
PHASE_S = 12.0
EVERY_FRAME = SamplingConfig(mode="every-frame")


class GilProbe:
    """A thread waking from 0.5 ms sleeps; its lateness, in ms, summarised when done."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.0005)
            self.late.append(time.perf_counter() - t - 0.0005)

    def done(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        ms = np.asarray(self.late) * 1000
        return {"probe_wakes": len(ms), "late_p50_ms": round(float(np.percentile(ms, 50)), 3),
                "late_p99_ms": round(float(np.percentile(ms, 99)), 3), "late_max_ms": round(float(ms.max()), 2)}


def decode_worker(todo: list[Path], lock: threading.Lock, count: list[int], stop: threading.Event) -> None:
    decoder = NvdecDecoder()
    while not stop.is_set():
        with lock:
            if not todo:
                return
            path = todo.pop()
        for batch in decoder.batches(path, EVERY_FRAME, 32):
            with lock:
                count[0] += len(batch)
            if stop.is_set():
                return


def model_worker(engines: Engines, frames: list[Any], lock: threading.Lock, count: list[int],
                 stop: threading.Event) -> None:
    faces = engines.faces
    assert isinstance(faces, FaceDetector), "the default face detector (BlazeFace)"
    while not stop.is_set():
        with STREAMS.lend() as stream:
            persons = engines.persons.detect(frames) if engines.persons is not None else []
            regions = [faces.head_regions(p.boxes, 1080, 1920) for p in persons]
            faces.detect(frames, regions)
            stream.synchronize()
        with lock:
            count[0] += len(frames)


def phase(name: str, engines: Engines, paths: list[Path], frames: list[Any], decode: bool, models: bool) -> None:
    lock, stop = threading.Lock(), threading.Event()
    decoded, analysed = [0], [0]
    todo = list(paths) * 4
    threads = [threading.Thread(target=decode_worker, args=(todo, lock, decoded, stop))
               for _ in range(DECODERS * decode)]
    threads += [threading.Thread(target=model_worker, args=(engines, frames, lock, analysed, stop))
                for _ in range(MODEL_THREADS * models)]
    probe = GilProbe()
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(PHASE_S)
    stop.set()
    wall = time.perf_counter() - t0
    for thread in threads:
        thread.join()
    print(json.dumps({"phase": name, "decoded_fps": round(decoded[0] / wall, 1),
                      "model_fps": round(analysed[0] / wall, 1), **probe.done()}), flush=True)


def main() -> None:
    work = Path(sys.argv[1])
    phases = sys.argv[2] if len(sys.argv) > 2 else "abcd"
    runtime, detection = RuntimeConfig(device="gpu", engine_start="wait"), DetectionConfig()
    t0 = time.perf_counter()
    engines = load_engines(detection, runtime, store=ModelStore())
    print(json.dumps({"load_and_warm_up_s": round(time.perf_counter() - t0, 1)}), flush=True)
    paths = repeated_clips(work, "h264", DECODERS)
    first = next(iter(NvdecDecoder().batches(paths[0], EVERY_FRAME, 32)))
    frames = [first.frames[i] for i in range(len(first))]
    if "a" in phases:
        phase("a_decoders_alone", engines, paths, frames, decode=True, models=False)
    if "b" in phases:
        phase("b_models_alone", engines, paths, frames, decode=False, models=True)
    if "c" in phases:
        phase("c_both", engines, paths, frames, decode=True, models=True)
    if "d" in phases:
        probe = GilProbe()
        row = gpu_pipeline_rows(engines, runtime, paths, DECODERS, lambda line: None, modes=("every-frame",),
                                detection=detection)["every-frame"]
        print(json.dumps({"phase": "d_every_frame_row", "video_fps": row["video_fps"], "wall_s": row["wall_s"],
                          "stage_s": row["stage_s"], **probe.done()}), flush=True)


if __name__ == "__main__":
    main()
