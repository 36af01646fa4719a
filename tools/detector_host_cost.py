"""What the detectors cost the host per analysis step beyond their models: the person and face detectors on 32
consecutive frames of a clip (CPU engines), their model runs recorded once and then replayed, so that what is
timed is the rest (levels and tiles, candidates, suppression). Run it on two trees to compare versions.

    PYTHONPATH=. python tools/detector_host_cost.py CLIP [FIRST_FRAME] [REPEATS]

DETECTOR_BATCH=32 runs the detectors on 32 frames at once, as a GPU worker does (default: the CPU's batch).

One line per detector with its runs and detections; then the milliseconds per step of each detector's
post-processing under cProfile (its own functions: candidates, suppression, tile plans), and without the
profiler the median of the detectors' host time with the model runs replayed (on a CPU this is mostly the
scaling of frames to the pyramid levels, which a GPU does in one kernel per level).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from engines.detectors import BlazeDetector, FaceDetector, PersonDetector
from engines.loader import load_engines
from engines.zoo import ModelStore
from schemas.config import DetectionConfig, RuntimeConfig

POST_PROCESSING = ("candidates", "_merge", "nms_clusters", "nms_clusters_frames", "fine_tile_origins", "_fine_plan")
"""Functions of engines/detectors.py timed as post-processing (those of either version that exist)."""


def frames_of(clip: Path, first: int, n: int = 32) -> list[np.ndarray]:
    out = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= first:
                out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return out


def main() -> None:
    clip = Path(sys.argv[1])
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    batch = int(os.environ.get("DETECTOR_BATCH", "0"))  # 0: the device's own
    engines = load_engines(DetectionConfig(), RuntimeConfig(device="cpu", detector_batch=batch), store=ModelStore())
    faces, persons = engines.faces, engines.persons
    if not isinstance(faces, FaceDetector) or not isinstance(persons, PersonDetector):
        raise SystemExit("needs the default detectors (BlazeFace and the person detector)")
    frames = frames_of(clip, first)
    people = persons.detect(frames)
    regions: list[np.ndarray | None] = [faces.head_regions(p.boxes, f.shape[0], f.shape[1])
                                        for p, f in zip(people, frames, strict=True)]
    regions[0] = None  # a whole-frame search on the step's first frame, as the pipeline does every 2 s

    def step_of(det: BlazeDetector) -> Callable[[], Any]:
        return (lambda: det.detect(frames, regions)) if det is faces else (lambda: det.detect(frames))

    recorded: list[tuple[BlazeDetector, list[dict[str, Any]]]] = []
    detectors: tuple[BlazeDetector, ...] = (persons, faces)
    for det in detectors:
        runs: list[dict[str, Any]] = []
        real = det.session.run

        def record(feeds: dict[str, Any], runs: list[dict[str, Any]] = runs, real: Any = real) -> dict[str, Any]:
            out = real(feeds)
            runs.append(out)
            return out

        det.session.run = record  # type: ignore[method-assign,assignment]
        found = step_of(det)()
        print(f"{type(det).__name__}: {len(runs)} runs, {sum(map(len, found))} detections in {len(frames)} frames")
        recorded.append((det, runs))

    def replayed() -> None:
        for det, runs in recorded:
            outputs: Iterator[dict[str, Any]] = iter(runs)

            def replay(feeds: dict[str, Any], outputs: Iterator[dict[str, Any]] = outputs) -> dict[str, Any]:
                return next(outputs)

            det.session.run = replay  # type: ignore[method-assign,assignment]
            step_of(det)()

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeats):
        replayed()
    profile.disable()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = 0.0
    for (path, line, name), (_, calls, _, cumulative, _) in sorted(stats.items(), key=lambda kv: -kv[1][3]):
        if name in POST_PROCESSING and path.endswith("detectors.py"):
            print(f"  {name} (line {line}): {calls / repeats:.0f} calls, {cumulative / repeats * 1e3:.2f} ms a step")
            if name not in ("nms_clusters", "nms_clusters_frames"):  # inside _merge
                total += cumulative / repeats
    print(f"post-processing under cProfile: {total * 1e3:.2f} ms a {len(frames)}-frame step")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        replayed()
        times.append(time.perf_counter() - start)
    print(f"host time with the model runs replayed: median {np.median(times) * 1e3:.1f} ms a step")


if __name__ == "__main__":
    main()
