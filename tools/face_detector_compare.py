"""BlazeFace (image pyramid) against CenterFace (whole frames) on the same frames; one JSON line per measurement.

    PYTHONPATH=. python tools/face_detector_compare.py [--device cpu|gpu] [--engine ENGINE]
        [--centerface-scales 1.0,0.75,0.5] [--only recall,photos,rotated,false_boxes,embedding,speed]

Measurements (each detector at its default threshold from schemas.config.DetectionConfig, and at a few others
for the synthetic frames; candidates are found at a low threshold and counted at each):

- `recall`: synthetic 1080p frames from tools/detector_recall.py (obama, biden, obama2 cut from the photos,
  12 per frame, on noise and on a real face-free scene, scikit-image's motorcycle_left.png at 1920x1080), 48
  faces per width of 22-96 px; a face is found when a box overlaps it with IoU > 0.3; boxes that overlap
  no face are false boxes.
- `photos`: t1.jpg (6 people) and the five portraits as they are.
- `rotated`: t1.jpg and the portraits flipped and rotated by -30, -15, 15, 30 degrees (a face is found when a
  box centre lies within half its width of the rotated face centre).
- `false_boxes`: six face-free photos (scikit-image) at their size and stretched to 1920x1080.
- `embedding`: alignment quality through the same chip pipeline (engines.embedder), for the four people's
  portraits: identity distances (same person: smaller is better) with each detector's keypoints; the L2
  distance from the detector's embedding of the portrait downscaled so that its face is 32-96 px wide, or
  rotated by +-15/30 degrees, or shifted by 1-7 px, to its embedding of the full-size portrait; and how far
  its full-size embedding lies from the one aligned on BlazeFace's keypoints.
- `speed`: ms per 1080p frame on the CPU (batches of 4), or frames per second on a GPU (batches of 32,
  frames already on the device, after each input shape is set up).

Engines open through engines.loader.load_engines, so `--device gpu` runs ONNX Runtime's CUDA provider (FP16
under the automatic engine) exactly as `vidx index --device gpu` does.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detector_recall import PORTRAIT_FACES, T1_FACES, iou, synthetic_frames

from engines.arrays import Array, cupy_module
from engines.centerface import CenterFaceDetector
from engines.detectors import Detections, FaceDetector
from engines.embedder import FaceEmbedder
from engines.images import load_rgb
from engines.loader import load_engines
from engines.photos import PORTRAITS, load_photo
from engines.sources import SourceFile, default_cache_dir, fetch_source
from schemas.config import DetectionConfig, RuntimeConfig

Detector = FaceDetector | CenterFaceDetector
WIDTHS = (22, 24, 28, 34, 40, 50, 64, 96)
THRESHOLDS = {"blazeface": (0.6, 0.65, 0.7, 0.75), "centerface": (0.3, 0.4, 0.5, 0.6)}
LOW = {"blazeface": 0.4, "centerface": 0.2}
"""Candidates are found at this threshold and counted at each of THRESHOLDS."""
ANGLES = (-30, -15, 15, 30)
EMBED_WIDTHS = (32, 48, 64, 96)
SHIFTS = ((3, 0), (0, 3), (5, 7), (1, 2))
PEOPLE = ("obama", "obama2", "obama3", "biden")
_SKIMAGE = ("scikit-image", "0.26.0")
FACE_FREE: dict[str, SourceFile] = {
    name: SourceFile(*_SKIMAGE, dist="wheel", member=f"skimage/data/{name}", sha256=sha, license="BSD-3-Clause")
    for name, sha in {
        "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
    }.items()
}
"""Real photos without a human face (a cat's face in chelsea.png counts as a false box)."""
Box = tuple[float, ...]
ALL = "recall,photos,rotated,false_boxes,embedding,speed"


def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def face_free(name: str) -> np.ndarray:
    return load_rgb(fetch_source(FACE_FREE[name], default_cache_dir()))


def stretch(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))


def above(d: Detections, threshold: float) -> np.ndarray:
    return d.boxes[d.scores >= threshold]


def matched(boxes: np.ndarray, truth: Sequence[Box]) -> tuple[int, int]:
    """(faces found, boxes that overlap no face)."""
    found = sum(any(iou(b, t) > 0.3 for b in boxes) for t in truth)
    false = sum(not any(iou(b, t) > 0.3 for t in truth) for b in boxes)
    return found, false


def rotate(image: np.ndarray, boxes: Sequence[Box], angle: float, flip: bool) -> tuple[np.ndarray, list[Box]]:
    """The image flipped left-right and/or turned counter-clockwise by angle degrees (canvas expanded, black
    corners), with each box's centre moved along and its width kept."""
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]) for b in boxes]
    if flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        centres = [(w - x, y, bw) for x, y, bw in centres]
    out = pil.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    a = math.radians(angle)
    moved: list[Box] = []
    for x, y, bw in centres:  # counter-clockwise on screen (y down): x' = cos dx + sin dy, y' = -sin dx + cos dy
        dx, dy = x - w / 2, y - h / 2
        nx = math.cos(a) * dx + math.sin(a) * dy + out.width / 2
        ny = -math.sin(a) * dx + math.cos(a) * dy + out.height / 2
        moved.append((nx - bw / 2, ny - bw / 2, nx + bw / 2, ny + bw / 2))
    return np.asarray(out), moved


def found_by_centre(d: Detections, threshold: float, truth: Sequence[Box]) -> int:
    boxes = above(d, threshold)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    n = 0
    for t in truth:
        tx, ty, tw = (t[0] + t[2]) / 2, (t[1] + t[3]) / 2, t[2] - t[0]
        n += bool(np.any(np.hypot(cx - tx, cy - ty) < tw / 2))
    return n


def largest(d: Detections, threshold: float) -> np.ndarray | None:
    """Keypoints of the largest face at or above threshold."""
    keep = np.flatnonzero(d.scores >= threshold)
    if not len(keep):
        return None
    areas = (d.boxes[keep, 2] - d.boxes[keep, 0]) * (d.boxes[keep, 3] - d.boxes[keep, 1])
    return d.keypoints[keep[int(np.argmax(areas))]]


def embed(embedder: FaceEmbedder, image: np.ndarray, kps: np.ndarray | None) -> np.ndarray | None:
    if kps is None:
        return None
    return embedder.embed([image], [0], kps[None])[0][0]


class Bench:
    def __init__(self, device: str, engine: str, cf_scales: Sequence[float]):
        self.device = device
        runtime = RuntimeConfig(device=device, engine=engine, engine_start="wait")  # type: ignore[arg-type]
        self.defaults = DetectionConfig()
        bf = load_engines(DetectionConfig(face_score=LOW["blazeface"], detect_persons=False), runtime,
                          warm_up=False)
        cf = load_engines(DetectionConfig(face_detector="centerface", centerface_score=LOW["centerface"],
                                          detect_persons=False), runtime, warm_up=False)
        self.embedder = bf.embedder
        self.on_gpu = bf.device == "cuda"
        self.runtime = bf.describe()["face_detector"]
        self.detectors: list[tuple[str, float | None, Detector]] = [("blazeface", None, bf.faces)]
        for scale in cf_scales:
            self.detectors.append(("centerface", scale, CenterFaceDetector(
                cf.faces.session, score_threshold=LOW["centerface"], batch_size=cf.faces.batch_size, scale=scale)))

    def default_threshold(self, name: str) -> float:
        return self.defaults.face_score if name == "blazeface" else self.defaults.centerface_score

    def detect(self, det: Detector, images: Sequence[np.ndarray]) -> list[Detections]:
        if self.on_gpu:
            cp = cupy_module()
            assert cp is not None
            return det.detect([cp.asarray(im) for im in images])
        return det.detect(list(images))

    def each(self, fn: Callable[[str, float | None, Detector, float], dict[str, Any]], measurement: str) -> None:
        for name, scale, det in self.detectors:
            started = time.monotonic()
            row = fn(name, scale, det, self.default_threshold(name))
            emit(measurement=measurement, detector=name, scale=scale, device=self.device, threshold=
                 self.default_threshold(name), **row, seconds=round(time.monotonic() - started, 1))


def run_recall(bench: Bench, photos: dict[str, np.ndarray]) -> None:
    scene = stretch(face_free("motorcycle_left.png"), 1920, 1080)
    frames = synthetic_frames(photos, scene, WIDTHS)

    def one(name: str, scale: float | None, det: Detector, th: float) -> dict[str, Any]:
        dets = [d for i in range(0, len(frames), 4) for d in bench.detect(det, [f for _, f, _ in frames[i:i + 4]])]
        by_th: dict[str, dict[str, Any]] = {}
        for t in THRESHOLDS[name]:
            found = {w: [0, 0] for w in WIDTHS}
            false, best_false = 0, 0.0
            for (w, _, truth), d in zip(frames, dets, strict=True):
                f, x = matched(above(d, t), truth)
                found[w][0] += f
                found[w][1] += len(truth)
                false += x
            by_th[str(t)] = {"found": {str(w): f"{a}/{b}" for w, (a, b) in found.items()},
                             "found_24_up": sum(a for w, (a, _) in found.items() if w >= 24),
                             "faces_24_up": sum(b for w, (_, b) in found.items() if w >= 24), "false_boxes": false}
        for (_, _, truth), d in zip(frames, dets, strict=True):
            for b, s in zip(d.boxes, d.scores, strict=True):
                if not any(iou(b, t) > 0.3 for t in truth):
                    best_false = max(best_false, float(s))
        return {"at_default": by_th[str(th)], "by_threshold": by_th, "best_false_score": round(best_false, 3),
                "frames": len(frames)}

    bench.each(one, "recall")


def run_photos(bench: Bench, photos: dict[str, np.ndarray]) -> None:
    def one(name: str, scale: float | None, det: Detector, th: float) -> dict[str, Any]:
        rows: dict[str, Any] = {}
        weakest, best_false = 1.0, 0.0
        for photo in ("t1", *PORTRAITS):
            d = bench.detect(det, [photos[photo]])[0]
            truth = T1_FACES if photo == "t1" else [PORTRAIT_FACES[photo]]
            f, x = matched(above(d, th), truth)
            rows[photo] = f"{f}/{len(truth)}" + (f" +{x} false" if x else "")
            for t in truth:
                weakest = min(weakest, max([float(s) for b, s in zip(d.boxes, d.scores, strict=True)
                                            if iou(b, t) > 0.3] or [0.0]))
            for b, s in zip(d.boxes, d.scores, strict=True):
                if not any(iou(b, t) > 0.3 for t in truth):
                    best_false = max(best_false, float(s))
        return {"found": rows, "weakest_face_score": round(weakest, 3), "best_false_score": round(best_false, 3)}

    bench.each(one, "photos")


def run_rotated(bench: Bench, photos: dict[str, np.ndarray]) -> None:
    cases = []
    for photo in ("t1", *PORTRAITS):
        truth = T1_FACES if photo == "t1" else [PORTRAIT_FACES[photo]]
        for flip in (False, True):
            for angle in (0, *ANGLES):
                if angle or flip:
                    cases.append((angle, flip, *rotate(photos[photo], truth, angle, flip)))

    def one(name: str, scale: float | None, det: Detector, th: float) -> dict[str, Any]:
        by_angle: dict[str, list[int]] = {}
        for angle, flip, image, truth in cases:
            d = bench.detect(det, [image])[0]
            r = by_angle.setdefault(f"{'flip ' if flip else ''}{angle:+d}", [0, 0])
            r[0] += found_by_centre(d, th, truth)
            r[1] += len(truth)
        total = [sum(v[0] for v in by_angle.values()), sum(v[1] for v in by_angle.values())]
        return {"found": f"{total[0]}/{total[1]}", "by_case": {k: f"{a}/{b}" for k, (a, b) in by_angle.items()}}

    bench.each(one, "rotated")


def run_false_boxes(bench: Bench) -> None:
    images = {}
    for name in FACE_FREE:
        im = face_free(name)
        images[name] = im
        images[f"{name}@1080p"] = stretch(im, 1920, 1080)

    def one(name: str, scale: float | None, det: Detector, th: float) -> dict[str, Any]:
        boxes, best = {}, 0.0
        for key, im in images.items():
            d = bench.detect(det, [im])[0]
            boxes[key] = int((d.scores >= th).sum())
            best = max([best, *map(float, d.scores)])
        return {"false_boxes": sum(boxes.values()), "by_image": {k: v for k, v in boxes.items() if v},
                "best_score": round(best, 3), "images": len(images)}

    bench.each(one, "false_boxes")


def run_embedding(bench: Bench, photos: dict[str, np.ndarray]) -> None:
    bf = bench.detectors[0][2]
    th_bf = bench.default_threshold("blazeface")
    reference = {p: embed(bench.embedder, photos[p], largest(bench.detect(bf, [photos[p]])[0], th_bf)) for p in PEOPLE}

    def one(name: str, scale: float | None, det: Detector, th: float) -> dict[str, Any]:
        own = {p: embed(bench.embedder, photos[p], largest(bench.detect(det, [photos[p]])[0], th)) for p in PEOPLE}

        def drift(image: np.ndarray, person: str) -> float | None:
            e = embed(bench.embedder, image, largest(bench.detect(det, [image])[0], th))
            ref = own[person]
            return None if e is None or ref is None else float(np.linalg.norm(e - ref))

        def summary(values: list[float | None]) -> dict[str, Any]:
            got = [v for v in values if v is not None]
            return {"mean": round(statistics.fmean(got), 3) if got else None,
                    "max": round(max(got), 3) if got else None, "missed": len(values) - len(got)}

        rows: dict[str, Any] = {"full_size_vs_blazeface": summary([
            None if (e := own[p]) is None or (r := reference[p]) is None else float(np.linalg.norm(e - r))
            for p in PEOPLE])}
        for w in EMBED_WIDTHS:
            values = []
            for p in PEOPLE:
                f = w / (PORTRAIT_FACES[p][2] - PORTRAIT_FACES[p][0])
                im = photos[p]
                values.append(drift(stretch(im, round(im.shape[1] * f), round(im.shape[0] * f)), p))
            rows[f"face_{w}px"] = summary(values)
        rows["rotated"] = summary([drift(rotate(photos[p], [PORTRAIT_FACES[p]], a, False)[0], p)
                                   for p in PEOPLE for a in ANGLES])
        rows["shifted"] = summary([drift(np.ascontiguousarray(np.pad(photos[p], ((dy, 0), (dx, 0), (0, 0)))
                                                              [:photos[p].shape[0], :photos[p].shape[1]]), p)
                                   for p in PEOPLE for dy, dx in SHIFTS])
        pairs = (("obama", "obama2"), ("obama", "obama3"), ("obama2", "obama3"), ("obama", "biden"))
        rows["identity"] = {f"{a}-{b}": round(float(np.linalg.norm(ea - eb)), 3) for a, b in pairs
                            if (ea := own[a]) is not None and (eb := own[b]) is not None}
        return rows

    bench.each(one, "embedding")


def run_speed(bench: Bench, photos: dict[str, np.ndarray], seconds: float) -> None:
    scene = stretch(face_free("motorcycle_left.png"), 1920, 1080)
    frames = [f for _, f, _ in synthetic_frames(photos, scene, (40,))]

    def one(name: str, scale: float | None, det: Detector, th: float) -> dict[str, Any]:
        low, det.score_threshold = det.score_threshold, th  # timed at the threshold indexing uses
        try:
            return timed(det)
        finally:
            det.score_threshold = low

    def timed(det: Detector) -> dict[str, Any]:
        batch = det.batch_size
        host = [frames[i % len(frames)] for i in range(batch)]
        if bench.on_gpu:
            cp = cupy_module()
            assert cp is not None
            dev: list[Array] = [cp.asarray(f) for f in host]
            det.prepare(1080, 1920)
            det.detect(dev)  # the pre- and post-processing kernels compile on first use
            cp.cuda.Device().synchronize()
            times: list[float] = []
            until = time.monotonic() + seconds
            while time.monotonic() < until or len(times) < 3:
                t = time.perf_counter()
                det.detect(dev)
                cp.cuda.Device().synchronize()
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            return {"frames_per_s": round(batch / med, 1), "batch": batch, "runs": len(times),
                    "runtime": bench.runtime, "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}
        det.detect(host)
        times = list[float]()
        for _ in range(max(3, int(seconds))):
            t = time.perf_counter()
            det.detect(host)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        return {"ms_per_frame": round(1000 * med / batch, 1), "batch": batch, "runs": len(times),
                "runtime": bench.runtime}

    bench.each(one, "speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--engine", default="auto", choices=("auto", "onnxruntime", "onnxruntime-fp16", "tensorrt"))
    parser.add_argument("--centerface-scales", default="1.0", help="comma-separated input scales for CenterFace")
    parser.add_argument("--only", default=None, help="comma-separated measurements (default: all on the CPU; "
                        "recall,speed on a GPU, where each new image size costs seconds of set-up)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing length of each speed measurement")
    args = parser.parse_args()
    bench = Bench(args.device, args.engine, [float(s) for s in args.centerface_scales.split(",")])
    photos = {n: load_photo(n) for n in ("t1", *PORTRAITS)}
    only = set((args.only or ("recall,speed" if args.device == "gpu" else ALL)).split(","))
    if "recall" in only:
        run_recall(bench, photos)
    if "photos" in only:
        run_photos(bench, photos)
    if "rotated" in only:
        run_rotated(bench, photos)
    if "false_boxes" in only:
        run_false_boxes(bench)
    if "embedding" in only:
        run_embedding(bench, photos)
    if "speed" in only:
        run_speed(bench, photos, args.seconds)


if __name__ == "__main__":
    main()
