"""BlazeFace (faces) and the BlazePose detector (people): tiling, anchor decoding, NMS.

Both are SSD-style MediaPipe detectors: a square input, a fixed anchor grid, a regressor per anchor
(box and keypoints relative to the anchor) and a score. The ONNX graphs take uint8 RGB tiles and
return `boxes` (raw regressors) and `scores` (after the sigmoid); everything else happens here, on
the array module of the session (numpy or CuPy), with NMS on the host over the few candidates left.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from engines.arrays import Array, array_module, to_host
from engines.imageops import crop_padded, resize
from engines.runtime.base import Session, session_array_module


@dataclass(frozen=True)
class AnchorSpec:
    """MediaPipe's SsdAnchorsCalculator with fixed anchor size: centres only."""

    size: int
    strides: tuple[int, ...]
    per_cell: tuple[int, ...]

    def centres(self) -> np.ndarray:
        out = []
        for stride, k in zip(self.strides, self.per_cell, strict=True):
            n = math.ceil(self.size / stride)
            ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
            out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], 1), k, axis=0))
        return np.concatenate(out).astype(np.float32)


@dataclass
class Detections:
    """Detections in one frame, in frame pixels, on the host."""

    boxes: np.ndarray
    """K x 4 float32, x0 y0 x1 y1."""
    scores: np.ndarray
    """K float32."""
    keypoints: np.ndarray
    """K x P x 2 float32 (x, y)."""

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, keypoints={self.keypoints.shape[1:]})"

    @classmethod
    def empty(cls, n_keypoints: int) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, n_keypoints, 2), np.float32))


@dataclass(frozen=True)
class Tile:
    """A size x size window of the frame scaled by `scale`, with its top-left at (x0, y0) there."""

    scale: float
    x0: int
    y0: int
    interior: tuple[bool, bool, bool, bool] = (False, False, False, False)
    """Whether the left, top, right, bottom edges lie inside the frame (cut faces may touch them)."""
    max_box: float = math.inf
    """Largest box (model pixels) this tile answers for; larger ones belong to a coarser level."""


def tile_positions(extent: int, size: int, overlap: int) -> list[int]:
    """Evenly spaced window starts covering [0, extent); centred (negative) when the window is larger."""
    if extent <= size:
        return [(extent - size) // 2]
    n = math.ceil((extent - overlap) / (size - overlap))
    return [round(i * (extent - size) / (n - 1)) for i in range(n)] if n > 1 else [0]


def plan_tiles(height: int, width: int, size: int, finest_scale: float, overlap: int,
               band: float = math.inf) -> list[Tile]:
    """An image pyramid cut into square tiles: the whole frame, then scales doubling up to finest_scale.

    Level 0 letterboxes the whole frame (large faces). Level 1 scales the short side to the tile size
    (two square tiles for 16:9). Each further level doubles the scale, so a face too small at one
    level is twice as large at the next; `overlap` lets every face that is too small for the coarser
    level lie wholly inside some tile. A finer level answers only for boxes under `band` times the
    scale step (in model pixels): larger ones are the coarser level's, and seen through a tile they
    are mostly false positives on clutter.
    """
    scales = [size / max(height, width)]
    s = size / min(height, width)
    if s <= scales[0] * 1.05:
        s = scales[0] * 2
    while scales[-1] < finest_scale:
        nxt = min(s, finest_scale)
        if nxt <= scales[-1] * 1.05:
            break
        scales.append(nxt)
        s *= 2
    tiles = []
    for level, scale in enumerate(scales):
        h, w = round(height * scale), round(width * scale)
        xs, ys = tile_positions(w, size, overlap), tile_positions(h, size, overlap)
        max_box = math.inf if level == 0 else band * scale / scales[level - 1]
        for y0 in ys:
            for x0 in xs:
                tiles.append(Tile(scale, x0, y0, (x0 > 0, y0 > 0, x0 + size < w, y0 + size < h), max_box))
    return tiles


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) < iou]
    return np.asarray(keep, dtype=np.int64)


@dataclass
class BlazeDetector:
    """Shared machinery of the two MediaPipe detectors."""

    session: Session
    anchors: AnchorSpec
    n_keypoints: int
    score_threshold: float
    nms_iou: float = 0.3
    batch_size: int = 64
    edge_margin: float = 2.0
    min_box: float = 0.0
    """Boxes narrower than this (model pixels) are below what the model finds reliably."""
    _anchor_cache: dict[int, Array] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return self.anchors.size

    def _xp(self) -> ModuleType:
        return session_array_module(self.session)

    def _anchor_array(self, xp: ModuleType) -> Array:
        key = id(xp)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = xp.asarray(self.anchors.centres())
        return self._anchor_cache[key]

    def plan(self, height: int, width: int) -> list[Tile]:
        raise NotImplementedError

    def detect(self, frames: Sequence[Array]) -> list[Detections]:
        """Detections for each frame (HxWx3 uint8 RGB, numpy or CuPy)."""
        if not frames:
            return []
        xp = self._xp()
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for chunk, batch in self._tile_batches(xp, frames):
            boxes, scores, kps, tile = self._run(batch)
            real = tile < len(chunk)  # GPU batches are padded with black tiles
            if len(scores) and real.any():
                parts.append(self._place(chunk, boxes[real], scores[real], kps[real], tile[real]))
        if not parts:
            return [Detections.empty(self.n_keypoints) for _ in frames]
        boxes, scores, kps, frame = (np.concatenate(p) for p in zip(*parts, strict=True))
        return [self._merge(boxes[frame == f], scores[frame == f], kps[frame == f]) for f in range(len(frames))]

    def _place(self, chunk: list[tuple[int, Tile]], boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray,
               tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates in tile pixels -> kept candidates in frame pixels, with their frame, for a whole batch.

        Drops boxes outside the tile's size band and boxes touching a tile edge that lies inside the frame
        (a neighbour or a coarser level has those whole).
        """
        info = np.array([(t.x0, t.y0, t.scale, t.max_box, *t.interior, f) for f, t in chunk], np.float64)[tile]
        x0, y0, scale, max_box = info[:, 0], info[:, 1], info[:, 2], info[:, 3]
        left, top, right, bottom = (info[:, 4 + k] > 0 for k in range(4))
        m, size = self.edge_margin, self.size
        width = boxes[:, 2] - boxes[:, 0]
        cut = (width > max_box) | (width < self.min_box)
        cut |= (left & (boxes[:, 0] < m)) | (top & (boxes[:, 1] < m))
        cut |= (right & (boxes[:, 2] > size - m)) | (bottom & (boxes[:, 3] > size - m))
        keep = ~cut
        offset = np.stack([x0, y0], 1)[keep].astype(np.float32)
        inv = (1.0 / scale[keep]).astype(np.float32)
        placed = ((boxes[keep].reshape(-1, 2, 2) + offset[:, None, :]) * inv[:, None, None]).reshape(-1, 4)
        placed_kps = (kps[keep] + offset[:, None, :]) * inv[:, None, None]
        return placed, scores[keep], placed_kps, info[keep, 8].astype(np.int64)

    def _tile_batches(self, xp: ModuleType, frames: Sequence[Array]
                      ) -> Iterator[tuple[list[tuple[int, Tile]], Array]]:
        """Batches of at most batch_size model inputs, with the (frame, tile) each one came from.

        On the GPU one kernel cuts every tile of a batch straight from the frames (no per-level images);
        on the CPU Pillow resizes each pyramid level once and tiles are cut from it.
        """
        if xp is not np:
            from engines import cuda_ops

            dev = [xp.ascontiguousarray(xp.asarray(f)) for f in frames]
            work = [(f, tile) for f, frame in enumerate(dev) for tile in self.plan(*frame.shape[:2])]
            for start in range(0, len(work), self.batch_size):
                chunk = work[start:start + self.batch_size]
                specs = [(f, *cuda_ops.level_size(dev[f].shape[0], dev[f].shape[1], tile.scale), tile.x0, tile.y0)
                         for f, tile in chunk]
                # Every GPU batch has the same size: each new input shape costs ONNX Runtime's CUDA provider
                # (and TensorRT's profile) seconds of set-up, far more than running a few black tiles.
                specs += [(0, 1, 1, self.size, self.size)] * (self.batch_size - len(specs))
                yield chunk, cuda_ops.tiles(dev, specs, self.size)
            return
        host: list[tuple[int, Tile, Array]] = []
        for f, frame in enumerate(frames):
            frame = to_host(frame)
            levels: dict[float, Array] = {}
            for tile in self.plan(frame.shape[0], frame.shape[1]):
                if tile.scale not in levels:
                    levels[tile.scale] = resize(frame, round(frame.shape[0] * tile.scale),
                                                round(frame.shape[1] * tile.scale))
                host.append((f, tile, crop_padded(levels[tile.scale], tile.y0, tile.x0, self.size, self.size)))
        for start in range(0, len(host), self.batch_size):
            part = host[start:start + self.batch_size]
            yield [(f, tile) for f, tile, _ in part], np.stack([t for _, _, t in part])

    def _run(self, batch: Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Model + anchor decoding + threshold for a batch of tiles: candidates in tile pixels.

        Returns boxes (N x 4), scores (N), keypoints (N x K x 2) and the tile of each (N), on the host,
        brought back in one transfer.
        """
        xp = array_module(batch)
        stream = getattr(self.session, "stream", None)
        out = self.session.run({"image": batch})
        k = self.n_keypoints
        with stream if stream is not None else contextlib.nullcontext():
            reg, scores = out["boxes"], out["scores"]
            if xp is not np:  # one kernel and one copy instead of a dozen small array operations
                from engines import cuda_ops

                rows = cuda_ops.decode_candidates(reg, scores, self._anchor_array(xp), threshold=self.score_threshold,
                                                  size=self.size, n_keypoints=k)
                if rows is not None:
                    flat = rows[:, 5 + 2 * k].astype(np.int64)
                    return (rows[:, :4], rows[:, 4], rows[:, 5:5 + 2 * k].reshape(-1, k, 2),
                            flat // scores.shape[1])
            b_idx, a_idx = xp.nonzero(scores >= self.score_threshold)
            r = reg[b_idx, a_idx] / self.size
            a = self._anchor_array(xp)[a_idx]
            cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
            boxes = xp.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2, cy + r[:, 3] / 2], 1) * self.size
            kps = (r[:, 4:4 + 2 * k] + xp.tile(a, (1, k))) * self.size
            packed = xp.concatenate([boxes, scores[b_idx, a_idx][:, None], kps, b_idx[:, None].astype(boxes.dtype)],
                                    1).astype(xp.float32)
            host = to_host(packed)
        return (host[:, :4], host[:, 4], host[:, 5:5 + 2 * k].reshape(-1, k, 2),
                host[:, 5 + 2 * k].astype(np.int64))

    def _merge(self, boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray) -> Detections:
        if not len(scores):
            return Detections.empty(self.n_keypoints)
        keep = nms(boxes, scores, self.nms_iou)
        return Detections(boxes[keep], scores[keep], kps[keep])


FACE_ANCHORS = AnchorSpec(size=192, strides=(4,), per_cell=(1,))
PERSON_ANCHORS = AnchorSpec(size=224, strides=(8, 16, 32), per_cell=(2, 2, 6))
FACE_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
"""Subject's right and left: the right eye appears on the image's left."""
MODEL_MIN_FACE_PX = 14.0
"""Smallest face width (192x192 model pixels) BlazeFace full-range finds everywhere but in the bottom-right
corner (measured: 14-96 px found at 100% away from the edges; see docs/models.md)."""
LEVEL_BAND = 3.0
"""A pyramid level answers for faces up to LEVEL_BAND x MODEL_MIN_FACE_PX times its scale step."""


class FaceDetector(BlazeDetector):
    """BlazeFace full-range over an image pyramid, so that small faces in large frames are found."""

    def __init__(self, session: Session, *, score_threshold: float = 0.75, min_face_px: int = 24,
                 batch_size: int = 64, overlap: int = 48):
        super().__init__(session, FACE_ANCHORS, len(FACE_KEYPOINTS), score_threshold, batch_size=batch_size,
                         min_box=MODEL_MIN_FACE_PX * 0.8)
        self.min_face_px = min_face_px
        self.overlap = overlap
        self._plans: dict[tuple[int, int], list[Tile]] = {}

    def plan(self, height: int, width: int) -> list[Tile]:
        key = (height, width)
        if key not in self._plans:
            finest = min(1.0, MODEL_MIN_FACE_PX / self.min_face_px)
            self._plans[key] = plan_tiles(height, width, self.size, finest, self.overlap,
                                          band=LEVEL_BAND * MODEL_MIN_FACE_PX)
        return self._plans[key]


PERSON_KEYPOINTS = ("hip_centre", "body_extent", "shoulder_centre", "head_extent")


class PersonDetector(BlazeDetector):
    """BlazePose's person detector on the whole frame and on two square tiles of it.

    It finds prominent people (a known limit: small people in crowds are missed). Its box covers the
    face; the person's box is the circle around the hip centre through the body-extent keypoint.
    """

    def __init__(self, session: Session, *, score_threshold: float = 0.5, batch_size: int = 64):
        super().__init__(session, PERSON_ANCHORS, len(PERSON_KEYPOINTS), score_threshold, batch_size=batch_size)
        self._plans: dict[tuple[int, int], list[Tile]] = {}

    def plan(self, height: int, width: int) -> list[Tile]:
        key = (height, width)
        if key not in self._plans:
            self._plans[key] = plan_tiles(height, width, self.size, self.size / min(height, width),
                                          overlap=self.size // 2)
        return self._plans[key]

    def detect(self, frames: Sequence[Array]) -> list[Detections]:
        out = []
        for dets, frame in zip(super().detect(frames), frames, strict=True):
            if len(dets):
                centre = dets.keypoints[:, 0]
                radius = np.linalg.norm(dets.keypoints[:, 1] - centre, axis=1)
                h, w = frame.shape[:2]
                body = np.stack([centre[:, 0] - radius, centre[:, 1] - radius,
                                 centre[:, 0] + radius, centre[:, 1] + radius], 1)
                body = np.clip(body, 0, [w, h, w, h]).astype(np.float32)
                keep = nms(body, dets.scores, 0.5)
                dets = Detections(body[keep], dets.scores[keep], dets.keypoints[keep])
            out.append(dets)
        return out
