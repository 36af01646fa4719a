"""The face detector with its depthwise-separable pairs folded (engines/convert/separable.py) against as the model
has them, on the GPU as vidx runs it: FP16, NHWC fused, one session per input shape, CUDA graphs.

    python3 tools/gpu_fold_separable.py [BATCH ...]     (default 64 32; needs onnxruntime-gpu, CuPy and a GPU)

Each variant runs in a fresh process (cuDNN state would otherwise carry over): `none` (VIDX_ORT_FOLD_SEPARABLE=0),
`all` (every pair), `squeeze` (vidx's rule: only pairs with fewer output than input channels,
engines.runtime.onnxruntime.narrowing), `expand` (only those with more). Environment: VARIANTS (default all four,
in this order; `none` first, as the others' outputs are compared with its). For each
input shape of a 1080p frame's pyramid (FaceDetector.input_shapes) at each batch: the first run (set-up
included), then the median of 20 runs of a uint8 batch of a real photo tiled over the canvas, each synchronised
(ms), and the largest difference of its outputs from the `none` variant's (scores, box coordinates in model
pixels). One JSON line per variant and shape, then a summary line per variant: the sum over the shapes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.convert.separable import fold_all  # noqa: E402
from engines.runtime.onnxruntime import narrowing  # noqa: E402

RULES: dict[str, Callable[[int, int], bool] | None] = {
    "none": None,
    "all": fold_all,
    "squeeze": narrowing,
    "expand": lambda c_in, c_out: c_out > c_in,
}
RUNS = 20
REFERENCE = Path("/tmp/vidx-fold-reference")


def photo_batch(shape: tuple[int, int, int, int]) -> np.ndarray:
    """A real photo (tests' t1.jpg, six people at a table) tiled over an N x H x W x 3 canvas."""
    from engines.photos import load_photo

    photo = load_photo("t1")
    _, h, w, _ = shape
    reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1)
    canvas = np.tile(photo, reps)[:h, :w]
    return np.ascontiguousarray(np.broadcast_to(canvas, shape))


def measure(variant: str, batches: list[int]) -> None:
    import cupy as cp

    from engines.detectors import FaceDetector
    from engines.runtime import onnxruntime as ortrt
    from engines.zoo import ModelStore

    rule = RULES[variant]
    os.environ[ortrt.FOLD_ENV] = "0" if rule is None else "1"
    if rule is not None:
        ortrt.FOLD_RULE = rule
    started = time.perf_counter()
    session = ortrt.OnnxRuntimeSession(ModelStore().load("face_detector"), device="cuda", fp16=True, start="wait")
    opened = time.perf_counter() - started
    REFERENCE.mkdir(exist_ok=True)
    totals = {"first_run_s": 0.0, "steady_ms": 0.0}
    for batch in batches:
        detector = FaceDetector(session, batch_size=batch, fine_tiles=True)
        for shape in detector.input_shapes(1080, 1920):
            image = cp.asarray(photo_batch(shape))
            cp.cuda.Device().synchronize()
            t = time.perf_counter()
            outs = session.run({"image": image})
            cp.cuda.Device().synchronize()
            first = time.perf_counter() - t
            times = []
            for _ in range(RUNS + 3):
                t = time.perf_counter()
                outs = session.run({"image": image})
                cp.cuda.Device().synchronize()
                times.append(time.perf_counter() - t)
            steady = statistics.median(times[3:]) * 1000
            host = {k: cp.asnumpy(v).astype(np.float32) for k, v in outs.items()}
            ref_file = REFERENCE / ("x".join(map(str, shape)) + ".npz")
            if variant == "none":
                np.savez(ref_file, **host)
                diff = {k: 0.0 for k in host}
            else:
                ref = np.load(ref_file)
                diff = {k: round(float(np.abs(host[k] - ref[k]).max()), 4) for k in host}
            print(json.dumps({"variant": variant, "shape": list(shape), "first_run_s": round(first, 3),
                              "steady_ms": round(steady, 3), "max_diff_from_none": diff}), flush=True)
            totals["first_run_s"] += first
            totals["steady_ms"] += steady
    print(json.dumps({"variant": variant, "summary": True, "session_open_s": round(opened, 2),
                      "engine": session.description, **{k: round(v, 3) for k, v in totals.items()}}), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        measure(sys.argv[2], [int(b) for b in sys.argv[3].split(",")])
        return
    batches = ",".join(sys.argv[1:]) or "64,32"
    variants = os.environ.get("VARIANTS", "none,all,squeeze,expand").split(",")
    for name in variants:
        proc = subprocess.run([sys.executable, __file__, "--one", name, batches], capture_output=True, text=True,
                              timeout=400)
        sys.stdout.write(proc.stdout)
        if proc.returncode:
            print(json.dumps({"variant": name, "error": proc.stderr[-800:]}), flush=True)


if __name__ == "__main__":
    main()
