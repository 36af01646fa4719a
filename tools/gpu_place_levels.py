"""What scaling frames to the detectors' pyramid levels costs on a GPU, with CuPy alone (no models, no decoders):
`cuda_ops.place_level` (separable, a window of the level to a block) against its one-thread-per-pixel 2-D form.

    PYTHONPATH=. python3 tools/gpu_place_levels.py [FRAMES]

One step of FRAMES (default 64) 1080p frames, each its own array as decoded frames are, a real photo scaled up
to 1920 x 1080 and shifted a little per frame. The launches are those of a step at the defaults (minimum face
24 px): the face detector's finest level from the frames (the frames whose finest level runs on tiles), its
coarser levels (the first from the frames, each next one from the one before), the person detector's two
levels (the fine one from the frames, the coarse one from it). Each launch is timed alone with CUDA events, median
of 20 after 3 unmeasured: each form's launch from one device table of the sources built beforehand (the events
bracket the host's dispatch of the launch too, a few microseconds), and the whole `place_level` /
`place_coarser_level` call as a step makes it (its table built and copied to the GPU included); the two forms'
pixels are compared (largest difference, share of values that differ). "form" says which kernel `place_level` took
(the per-pixel one where a level shrinks too much for the windows). One JSON line per launch, then a summary line.
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
    totals = {"tiled_kernel_ms": 0.0, "per_pixel_kernel_ms": 0.0, "place_level_call_ms": 0.0}
    for name, level, finer in launches:
        out, reference = canvases[id(level)], cp.zeros_like(canvases[id(level)])
        width, height = level.width, level.height
        call: Callable[[], None]
        if finer is None:
            source_w, source_h = WIDTH, HEIGHT
            ptrs, dims = cuda_ops._frame_table(frames)
            call = partial(cuda_ops.place_level, frames, width, height, out)
        else:
            canvas, source_w, source_h = canvases[id(finer)], finer.width, finer.height
            ptrs, dims = cuda_ops._canvas_table(canvas, n, source_h, source_w)
            call = partial(cuda_ops.place_coarser_level, canvas, n, source_h, source_w, width, height, out)
        times = {"tiled_kernel_ms": timed(partial(cuda_ops._place, ptrs, dims, n, width, height, out, source_h)),
                 "per_pixel_kernel_ms": timed(partial(cuda_ops._place_per_pixel, ptrs, dims, n, width, height,
                                                      reference)),
                 "place_level_call_ms": timed(call)}
        for key, value in times.items():
            totals[key] += value
        diff = np.abs(out[:, :height, :width].get().astype(np.int16) - reference[:, :height, :width].get())
        row = {"launch": name, "frames": n, "from": f"{source_w}x{source_h}", "to": f"{width}x{height}",
               "ratio": round(source_h / height, 3),
               "form": ("tiled" if cuda_ops.place_shared_bytes(source_h, height) <= cuda_ops.PLACE_SHARED_BYTES
                        else "per_pixel"),
               **{key: round(value, 4) for key, value in times.items()},
               "speed_up": round(times["per_pixel_kernel_ms"] / times["tiled_kernel_ms"], 2),
               "max_difference": int(diff.max()), "share_differing": float((diff > 0).mean())}
        print(json.dumps(row), flush=True)
    device = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())["name"].decode()
    print(json.dumps({"summary": True, "frames": n, "device": device,
                      **{f"step_{key}": round(value, 3) for key, value in totals.items()},
                      "speed_up": round(totals["per_pixel_kernel_ms"] / totals["tiled_kernel_ms"], 2)}))


if __name__ == "__main__":
    main()
