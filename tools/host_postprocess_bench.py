"""Host post-processing before and after vectorising (docs/gpu.md item 25), timed on this machine.

    python3 tools/host_postprocess_bench.py

Suppression: `nms_clusters` (one IoU matrix) against the box-by-box loop it replaced for 5, 30 and 120
candidates; chip alignment maps: `chips_from_frames` (all faces in closed form) against an SVD
(Umeyama) per face, for 3 and 30 faces. Median of repeated calls, microseconds.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from functools import partial

import numpy as np

from engines.detectors import _nms_clusters_boxwise, nms_clusters
from engines.embedder import chip_points, chips_from_frames


def umeyama_map(points: np.ndarray) -> np.ndarray:
    """Chip -> frame map of one face the way it was computed before: Umeyama's SVD, then an inverse."""
    dst = chip_points()
    mu_s, mu_d = points.mean(0), dst.mean(0)
    sc, dc = points - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(dc.T @ sc / len(points))
    d = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / ((sc ** 2).sum() / len(points))
    fwd = np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])
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
