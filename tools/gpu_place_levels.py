"""What scaling frames to the detectors' pyramid levels costs on a GPU, with CuPy alone (no models, no decoders):
`cuda_ops.place_level` (separable, a window of the level to a block) against its one-thread-per-pixel 2-D form.

    PYTHONPATH=. python3 tools/gpu_place_levels.py [FRAMES]

One step of FRAMES (default 64) 1080p frames, each its own array as decoded frames are, a real photo scaled up
to 1920 x 1080 and shifted a little per frame. The launches are those of a step at the defaults (minimum face
24 px): the face detector's finest level from the frames (the frames whose finest level runs on tiles), its
coarser levels (the first from the frames, each next one from the one before), the person detector's two
levels (the fine one from the frames, the coarse one from it). Each launch is timed alone with CUDA events,
median of 20 after 3 unmeasured, both forms; the two forms' pixels are compared (largest difference, share of
values that differ). One JSON line per launch, then a summary line.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from functools import partial

import numpy as np

from engines import cuda_ops
from engines.arrays import Array, require_cupy
from engines.detectors import (
    CORNER_MARGIN,
    FINEST_FACE_PX,
    LEVEL_STEP,
    MODEL_MAX_FACE_PX,
    PERSON_ALIGN,
    PERSON_COARSE_SIDE,
    PERSON_LONG_SIDE,
    Level,
    plan_levels,
)
from engines.photos import load_photo
from schemas.config import DetectionConfig

cp = require_cupy()
HEIGHT, WIDTH = 1080, 1920
REPEATS, WARM = 20, 3


def frames_1080p(n: int) -> list[Array]:
    photo = cp.asarray(load_photo("t1"))
    big = cp.zeros((1, HEIGHT + 64, WIDTH + 64, 3), cp.uint8)
    cuda_ops.place_level([photo], WIDTH + 64, HEIGHT + 64, big)
    return [cp.ascontiguousarray(big[0, k % 61:k % 61 + HEIGHT, k % 53:k % 53 + WIDTH]) for k in range(n)]


def face_levels() -> list[Level]:
    scales = [min(1.0, FINEST_FACE_PX / DetectionConfig().min_face_px)]
    while min(HEIGHT, WIDTH) * scales[-1] > MODEL_MAX_FACE_PX:
        scales.append(scales[-1] / LEVEL_STEP)
    return plan_levels(HEIGHT, WIDTH, scales, align=32, margin=CORNER_MARGIN)


def person_levels() -> list[Level]:
    return plan_levels(HEIGHT, WIDTH, [PERSON_LONG_SIDE / WIDTH, PERSON_COARSE_SIDE / WIDTH], align=PERSON_ALIGN,
                       margin=0)


def timed(launch: Callable[[], None]) -> float:
    """Median milliseconds of one launch, alone on the GPU."""
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for i in range(WARM + REPEATS):
        start.record()
        launch()
        end.record()
        end.synchronize()
        if i >= WARM:
            times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    frames = frames_1080p(n)
    face, person = face_levels(), person_levels()
    # (name, level, the level it is scaled from; None: from the frames)
    launches: list[tuple[str, Level, Level | None]] = [("face finest", face[0], None)]
    launches += [(f"face level {i}", level, face[i - 1] if i > 1 else None) for i, level in enumerate(face) if i]
    launches += [("person fine", person[0], None), ("person coarse", person[1], person[0])]
    canvases = {id(level): cp.zeros((n, level.canvas_h, level.canvas_w, 3), cp.uint8) for level in face + person}
    totals = [0.0, 0.0]
    for name, level, finer in launches:
        out, reference = canvases[id(level)], cp.zeros_like(canvases[id(level)])
        width, height = level.width, level.height
        tiled: Callable[[], None]
        if finer is None:
            source, source_w, source_h = frames, WIDTH, HEIGHT
            tiled = partial(cuda_ops.place_level, frames, width, height, out)
        else:
            canvas, source_w, source_h = canvases[id(finer)], finer.width, finer.height
            source = [canvas[k, :source_h, :source_w].copy() for k in range(n)]
            tiled = partial(cuda_ops.place_coarser_level, canvas, n, source_h, source_w, width, height, out)
        per_pixel = partial(cuda_ops.place_level_per_pixel, source, width, height, reference)
        tiled_ms, per_pixel_ms = timed(tiled), timed(per_pixel)
        totals[0] += tiled_ms
        totals[1] += per_pixel_ms
        diff = np.abs(out[:, :height, :width].get().astype(np.int16) - reference[:, :height, :width].get())
        print(json.dumps({"launch": name, "frames": n, "from": f"{source_w}x{source_h}", "to": f"{width}x{height}",
                          "ratio": round(source_h / height, 3), "place_level_ms": round(tiled_ms, 4),
                          "per_pixel_ms": round(per_pixel_ms, 4), "speed_up": round(per_pixel_ms / tiled_ms, 2),
                          "max_difference": int(diff.max()), "share_differing": float((diff > 0).mean())}),
              flush=True)
    print(json.dumps({"summary": True, "frames": n, "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                      "step_place_level_ms": round(totals[0], 3), "step_per_pixel_ms": round(totals[1], 3),
                      "speed_up": round(totals[1] / totals[0], 2)}))


if __name__ == "__main__":
    main()
