"""Face detector recall by face size, and its clutter, on synthetic 1080p frames and the bundled photos.

Usage: python tools/detector_recall.py EMPTY_SCENE_CLIP [STEP,BAND ...]

EMPTY_SCENE_CLIP: a video without faces whose first frame serves as a real-scene background (the test
archive's `empty_scene.mp4`). Each STEP,BAND pair overrides engines.detectors.LEVEL_STEP / LEVEL_BAND
(default: the current values). For face widths 22-300 px, 2 backgrounds (noise, scene) x 2 repeats of
12 faces (obama, biden, obama2 cut from the photos) per frame; prints faces found per size at score
thresholds 0.6-0.75, the best-scoring non-face in the photos and the frames, and the weakest real face
in t1.jpg and in the portraits. Runs on the CPU (ONNX Runtime), a few minutes on two cores.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image

import engines.detectors as detectors
from engines.loader import load_engines
from engines.photos import photo_path
from schemas.config import DetectionConfig

T1_FACES: list[tuple[float, ...]] = [
    (452, 285, 578, 411), (739, 368, 836, 466), (59, 283, 170, 394), (866, 73, 998, 204),
    (1112, 283, 1230, 402), (262, 171, 363, 272),
]
PORTRAIT_FACES: dict[str, tuple[float, ...]] = {
    "obama": (364, 131, 638, 405), "obama2": (157, 274, 480, 597), "obama3": (654, 293, 944, 584),
    "biden": (421, 225, 745, 549), "astronaut": (175, 70, 277, 173),
}
"""Face boxes in the photos (read off the detector's output and checked by eye)."""
WIDTHS = [22, 24, 28, 34, 40, 50, 64, 100, 140, 200, 300]
THRESHOLDS = (0.6, 0.65, 0.7, 0.75)


def iou(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...] | np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def synthetic_frames(photos: dict[str, np.ndarray], scene: np.ndarray, widths: Sequence[int] = WIDTHS
                     ) -> list[tuple[int, np.ndarray, list[tuple[float, ...]]]]:
    rng = np.random.default_rng(1)
    noise = rng.normal(110, 25, (1080, 1920, 3)).clip(0, 255).astype(np.uint8)
    crops = []
    for name in ("obama", "biden", "obama2"):
        im, b = photos[name], PORTRAIT_FACES[name]
        w, cx, cy = b[2] - b[0], (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        x0, y0 = int(max(0, cx - w)), int(max(0, cy - w))
        x1, y1 = int(min(im.shape[1], cx + w)), int(min(im.shape[0], cy + w))
        crops.append((im[y0:y1, x0:x1], (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0)))
    out: list[tuple[int, np.ndarray, list[tuple[float, ...]]]] = []
    for width in widths:
        for background in (noise, scene):
            for rep in range(2):
                frame, truth = background.copy(), list[tuple[float, ...]]()
                cols, rows = max(1, int(1920 // (2.2 * width))), max(1, int(1080 // (2.2 * width)))
                for ci, cell in enumerate(rng.permutation(cols * rows)[:12]):
                    crop, fb = crops[(ci + rep) % len(crops)]
                    s = width / (fb[2] - fb[0])
                    cw, ch = max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))
                    x = int(cell % cols * 1920 / cols + rng.uniform(0, max(1, 1920 / cols - cw)))
                    y = int(cell // cols * 1080 / rows + rng.uniform(0, max(1, 1080 / rows - ch)))
                    x, y = max(0, min(x, 1920 - cw)), max(0, min(y, 1080 - ch))
                    patch = np.asarray(Image.fromarray(crop).resize((cw, ch), Image.Resampling.BILINEAR,
                                                                    reducing_gap=3.0))
                    frame[y:y + ch, x:x + cw] = patch[:1080 - y, :1920 - x]
                    truth.append((x + fb[0] * s, y + fb[1] * s, x + fb[2] * s, y + fb[3] * s))
                out.append((width, frame, truth))
    return out


def main() -> None:
    scene_clip = sys.argv[1]
    configs = [tuple(map(float, c.split(","))) for c in sys.argv[2:]] or [(detectors.LEVEL_STEP,
                                                                          detectors.LEVEL_BAND)]
    names = ["t1", *PORTRAIT_FACES]
    photos = {n: np.asarray(Image.open(photo_path(n)).convert("RGB")) for n in names}
    with av.open(scene_clip) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    scenes = synthetic_frames(photos, np.asarray(Image.fromarray(first).resize((1920, 1080))))
    for step, band in configs:
        detectors.LEVEL_STEP, detectors.LEVEL_BAND = step, band
        det = load_engines(DetectionConfig(face_score=0.4), warm_up=False).faces  # plans the levels afresh
        clutter, t1_weakest, portrait_weakest = 0.0, 1.0, 1.0
        for name, im in photos.items():
            d = det.detect([im])[0]
            truth = T1_FACES if name == "t1" else [PORTRAIT_FACES[name]]
            for b, s in zip(d.boxes, d.scores, strict=True):
                if not any(iou(b, t) > 0.3 for t in truth):
                    clutter = max(clutter, float(s))
            for t in truth:
                best = max([float(s) for b, s in zip(d.boxes, d.scores, strict=True) if iou(b, t) > 0.3] or [0.0])
                if name == "t1":
                    t1_weakest = min(t1_weakest, best)
                else:
                    portrait_weakest = min(portrait_weakest, best)
        found: dict[tuple[float, int], list[int]] = {}
        synthetic_clutter = 0.0
        for width, frame, truth in scenes:
            d = det.detect([frame])[0]
            for th in THRESHOLDS:
                sel = d.boxes[d.scores >= th]
                r = found.setdefault((th, width), [0, 0])
                r[0] += sum(any(iou(b, c) > 0.3 for c in sel) for b in truth)
                r[1] += len(truth)
            for b, s in zip(d.boxes, d.scores, strict=True):
                if not any(iou(b, t) > 0.3 for t in truth):
                    synthetic_clutter = max(synthetic_clutter, float(s))
        levels = det.plan(1080, 1920)
        print(f"level step {step}, band {band}: levels {[round(lv.scale, 4) for lv in levels]}, "
              f"{sum(lv.canvas_h * lv.canvas_w for lv in levels)} model px per 1080p frame")
        print(f"  photos: best clutter {clutter:.2f}, weakest t1 face {t1_weakest:.2f}, "
              f"weakest portrait {portrait_weakest:.2f}; synthetic frames: best clutter {synthetic_clutter:.2f}")
        for th in THRESHOLDS:
            print(f"  score >= {th}: " + " ".join(f"{w}px {found[(th, w)][0]}/{found[(th, w)][1]}" for w in WIDTHS))


if __name__ == "__main__":
    main()
