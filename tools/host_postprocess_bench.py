"""Host post-processing before and after vectorising (docs/gpu.md item 25), timed on this machine.

    python3 tools/host_postprocess_bench.py

Suppression: `nms_clusters` (one IoU matrix) against the box-by-box loop it replaced for 5, 30 and 120
candidates; chip alignment maps: `chips_from_frames` (all faces in closed form) against an SVD
(Umeyama) per face, for 3 and 30 faces. Median of repeated calls, microseconds.
"""

from __future__ import annotations

import importlib.util
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from engines.detectors import _nms_clusters_boxwise, nms_clusters
from engines.embedder import chip_points, chips_from_frames


def _reference_umeyama() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The per-face SVD (Umeyama) that chips_from_frames replaced: the tests' reference implementation."""
    path = Path(__file__).resolve().parent.parent / "tests" / "test_embedder.py"
    spec = importlib.util.spec_from_file_location("test_embedder_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.umeyama  # type: ignore[no-any-return]


UMEYAMA = _reference_umeyama()


def umeyama_map(points: np.ndarray) -> np.ndarray:
    """Chip -> frame map of one face the way it was computed before: Umeyama's SVD, then an inverse."""
    fwd = UMEYAMA(points, chip_points())
    return np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]


def per_face_maps(kps: np.ndarray) -> list[np.ndarray]:
    return [umeyama_map(p[:4]) for p in kps]


def micros(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    for n in (5, 30, 120):
        xy = rng.uniform(0, 400, (n, 2)).astype(np.float32)
        boxes = np.hstack([xy, xy + rng.uniform(20, 60, (n, 1)).astype(np.float32)])
        scores = rng.uniform(0.6, 1, n).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        matrix = micros(partial(nms_clusters, boxes, scores, 0.3), 500)
        boxwise = micros(partial(_nms_clusters_boxwise, boxes, 0.3, order), 500)
        print(f"suppression, {n} candidates: matrix {matrix:.0f} us, box by box {boxwise:.0f} us")
    for k in (3, 30):
        kps = rng.uniform(0, 1000, (k, 6, 2))
        closed = micros(partial(chips_from_frames, kps), 500)
        svd = micros(partial(per_face_maps, kps), 100)
        print(f"chip maps, {k} faces: closed form {closed:.0f} us, SVD per face {svd:.0f} us")


if __name__ == "__main__":
    main()
