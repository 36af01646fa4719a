"""BlazeFace (faces) and YOLOv3-tiny (people): frames scaled onto canvases, decoding, NMS.

BlazeFace is an SSD-style MediaPipe detector: an anchor grid, a regressor per anchor (box and keypoints
relative to the anchor) and a score. It is fully convolutional, and its ONNX graph is converted dynamic
in image size (engines.convert.tflite_onnx), so a pyramid level of a frame is a model input as a whole:
the frame scaled by the level's factor, on a black canvas whose sides are multiples of the network's
total stride. There are no tiles, hence no overlap to compute twice and no faces cut by tile edges. The
graph takes uint8 RGB and returns `boxes` (raw regressors) and `scores` (after the sigmoid); everything
else happens here, on the array module of the session (numpy or CuPy), with NMS on the host over the few
candidates left (weighted: a face is the score-weighted mean of the candidates it suppresses).

The person detector (YOLOv3-tiny, COCO's person class, engines.convert.darknet_onnx) runs on the same
machinery with two levels per frame (a fine one for small people, a coarse one for large people); its
graph decodes boxes itself, and suppression is plain greedy NMS.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Protocol

import numpy as np

from engines.arrays import Array, array_module, padded_batch, to_host
from engines.imageops import resize
from engines.runtime.base import Session, session_array_module
from engines.streams import side_by_side


@dataclass(frozen=True)
class AnchorSpec:
    """MediaPipe's SsdAnchorsCalculator with fixed anchor size: centres only."""

    size: int
    """The input size the model was trained at (its anchors' reference)."""
    strides: tuple[int, ...]
    per_cell: tuple[int, ...]
    align: int = 32
    """The network's total stride: input heights and widths must be multiples of it."""

    def centres(self, height: int, width: int) -> np.ndarray:
        """A x 2 anchor centres (x, y) in input pixels for a height x width input, in the graph's output
        order: per stride, row-major over the grid, `per_cell` anchors per cell."""
        out = []
        for stride, k in zip(self.strides, self.per_cell, strict=True):
            ys, xs = np.meshgrid((np.arange(math.ceil(height / stride)) + 0.5) * stride,
                                 (np.arange(math.ceil(width / stride)) + 0.5) * stride, indexing="ij")
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
    """K x P x 2 float32 (x, y); P is 0 for a detector without keypoints (people)."""

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, keypoints={self.keypoints.shape[1:]})"

    @classmethod
    def empty(cls, n_keypoints: int) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, n_keypoints, 2), np.float32))


@dataclass(frozen=True)
class Level:
    """One pyramid level, one model input: the frame scaled by `scale` to height x width, at the top left
    of a black canvas_h x canvas_w canvas (sides multiples of the network's stride)."""

    scale: float
    height: int
    width: int
    canvas_h: int
    canvas_w: int
    max_box: float = math.inf
    """Largest box (model pixels) this level answers for; larger ones belong to a coarser level."""
    min_box: float = 0.0
    """Smallest box (model pixels) this level answers for; smaller ones belong to a finer level."""


def _align_up(n: int, align: int) -> int:
    return -(-n // align) * align


def plan_levels(height: int, width: int, scales: Sequence[float], *, align: int, margin: int,
                band: float = math.inf) -> list[Level]:
    """Pyramid levels at `scales` (finest first), each on a canvas that leaves at least `margin` black
    pixels right of and below the scaled frame, so that nothing of the frame lies in the model's
    bottom-right corner; every level but the coarsest answers only for boxes under `band` times its scale
    step (model pixels)."""
    levels = []
    for i, scale in enumerate(scales):
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        step = scale / scales[i + 1] if i + 1 < len(scales) else math.inf
        levels.append(Level(scale, h, w, _align_up(h + margin, align), _align_up(w + margin, align), band * step))
    return levels


FINE_TILE = 256
"""Side of the tiles the finest level runs on when it runs on regions (a multiple of every detector's stride)."""
TILE_MARGIN = 16
"""Black pixels right of and below each tile's picture (as CORNER_MARGIN for whole levels: BlazeFace misses
small faces at its input's bottom-right corner)."""
TILE_PICTURE = FINE_TILE - TILE_MARGIN
TILE_EDGE = 16
"""A tile's candidate counts only if its centre is this far from the tile's inner edges (level pixels)."""
TILE_OVERLAP = 3 * TILE_EDGE
"""Neighbouring tiles overlap at least this much, so every point of a level is TILE_EDGE or more inside one
of them, and every face the finest level answers for (under 70 model pixels, mostly far smaller) is whole
in the tile that counts it."""
TILE_STRIDE = TILE_PICTURE - TILE_OVERLAP
TILE_REACH = 2 * TILE_EDGE
"""Regions grow by this much (level pixels) before tiling, so a face centred on a region's edge is counted."""
FINE_CANVAS_BATCH = 4
"""On a GPU, frames whose finest level runs whole (not on tiles) run FINE_CANVAS_BATCH to a batch (padded):
a whole-frame search then costs an eighth of a 32-frame batch, not all of it."""


def _axis_grid(length: int) -> np.ndarray:
    """Origins of the tiles along an axis `length` long: one grid per level, TILE_STRIDE apart and the last
    one flush with the end, so a tile's candidates never depend on where a region was, only on whether the
    tile runs (guided and whole-frame searches give the same candidates in the tiles they share, and a
    person box a few pixels off picks the same tiles)."""
    if length <= TILE_PICTURE:
        return np.zeros(1, np.int64)
    last = length - TILE_PICTURE
    return np.append(np.arange(0, last, TILE_STRIDE, dtype=np.int64), last)


def tile_plan(rects: np.ndarray, owner: np.ndarray, width: int, height: int) -> np.ndarray:
    """The tiles over K x 4 rectangles (x0 y0 x1 y1, level pixels, grown by TILE_REACH) of a level image width
    x height, each rectangle belonging to `owner` (K, non-decreasing: the frame it is in): T x 3 rows (owner,
    x, y: a tile's top-left corner), each tile of an owner once, in the order the rectangles first reach it
    (a rectangle's tiles row by row)."""
    r = np.asarray(rects, np.float64).reshape(-1, 4) + np.array([-TILE_REACH, -TILE_REACH, TILE_REACH, TILE_REACH])
    owner = np.asarray(owner, np.int64).reshape(-1)
    inside = (r[:, 2] > 0) & (r[:, 3] > 0) & (r[:, 0] < width) & (r[:, 1] < height)
    r, owner = r[inside], owner[inside]
    xs, ys = _axis_grid(width), _axis_grid(height)
    # the tiles of an axis reaching into [lo, hi): origin < hi and origin + TILE_PICTURE > lo, a run of the grid
    x_lo, x_hi = np.searchsorted(xs + TILE_PICTURE, r[:, 0], "right"), np.searchsorted(xs, r[:, 2], "left")
    y_lo, y_hi = np.searchsorted(ys + TILE_PICTURE, r[:, 1], "right"), np.searchsorted(ys, r[:, 3], "left")
    nx, ny = np.maximum(x_hi - x_lo, 0), np.maximum(y_hi - y_lo, 0)
    counts = nx * ny
    rect = np.repeat(np.arange(len(r)), counts)
    step = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    ix = x_lo[rect] + step % np.maximum(nx[rect], 1)
    iy = y_lo[rect] + step // np.maximum(nx[rect], 1)
    key = (owner[rect] * len(ys) + iy) * len(xs) + ix
    _, first = np.unique(key, return_index=True)
    first.sort()
    return np.stack([owner[rect][first], xs[ix[first]], ys[iy[first]]], 1)


def cut_tiles(xp: ModuleType, images: Array, chunk: np.ndarray | Sequence[tuple[int, int, int]], size: int) -> Array:
    """`size` tiles (size x FINE_TILE x FINE_TILE x 3) cut from `images` (N x H x W x 3, one level's) in one
    gather: tile i holds images[k][y:y + TILE_PICTURE, x:x + TILE_PICTURE] for chunk[i] = (k, x, y) at its top
    left, black beyond its picture and the image; the tiles past the chunk's are black."""
    n, height, width = len(chunk), int(images.shape[1]), int(images.shape[2])
    plan = np.zeros((size, 3), np.int64)
    plan[:n] = np.asarray(chunk, np.int64).reshape(-1, 3)
    offsets = np.arange(FINE_TILE)
    rows, cols = plan[:, 2:3] + offsets, plan[:, 1:2] + offsets
    on_picture = offsets < TILE_PICTURE
    # one upload: each tile's image, rows, columns, and which rows and columns are picture
    table = xp.asarray(np.stack([np.repeat(plan[:, :1], FINE_TILE, 1), np.minimum(rows, height - 1),
                                 np.minimum(cols, width - 1),
                                 on_picture & (rows < height) & (np.arange(size) < n)[:, None],
                                 on_picture & (cols < width)]).astype(np.int32))
    image, row, col, row_ok, col_ok = table
    tiles = images[image[:, :, None], row[:, :, None], col[:, None, :]]
    return tiles * (row_ok[:, :, None] * col_ok[:, None, :]).astype(np.uint8)[..., None]


def _inside_tile(centre: np.ndarray, origin: np.ndarray, length: int) -> np.ndarray:
    """Whether candidates centred at `centre` (tile pixels, one axis) count in tiles at `origin`: on the
    picture, and TILE_EDGE or more from each edge that lies inside the level image."""
    picture = np.minimum(TILE_PICTURE, length - origin)
    ok = centre < picture
    ok &= (origin == 0) | (centre >= TILE_EDGE)
    ok &= (origin + TILE_PICTURE >= length) | (centre < TILE_PICTURE - TILE_EDGE)
    return ok


Candidates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""One run's candidates in frame pixels: boxes (N x 4), scores (N), keypoints (N x K x 2) and the frame of each
(N, an index into the frames detected together)."""
RawCandidates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""One run's candidates on the host: boxes (N x 4), scores (N), keypoints (N x K x 2), batch image of each (N)."""


class Detecting(Protocol):
    """The second half of BlazeDetector.queue_detect: given the frames' regions (or none), their detections."""

    def __call__(self, regions: Sequence[np.ndarray | None] | None = None) -> list[Detections]: ...


NMS_MATRIX_MAX = 512
"""Up to this many candidates, suppression works from one IoU matrix (a few array operations); above it,
box by box (an n x n matrix of a crowded frame's thousands of candidates would cost more than it saves)."""


def nms_clusters(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[np.ndarray]:
    """Greedy non-maximum suppression, best first: for each box kept, its index followed by the indices of
    the boxes it suppresses (IoU >= iou)."""
    n = len(boxes)
    if n <= 1:
        return [np.zeros(1, np.int64)] if n else []
    order = np.argsort(-scores, kind="stable")
    if n > NMS_MATRIX_MAX:
        return _nms_clusters_boxwise(boxes, iou, order)
    overlaps = _overlaps(boxes[order], iou)
    alive = np.ones(n, bool)
    clusters = []
    for i in range(n):  # i: the best box still alive (every better one is in a cluster already)
        if alive[i]:
            members = np.flatnonzero(alive & overlaps[i])
            alive[members] = False
            clusters.append(order[members])
    return clusters


def _overlaps(b: np.ndarray, iou: float) -> np.ndarray:
    """Whether box i overlaps box j (IoU >= iou) for ... x n x 4 boxes: ... x n x n, every box overlapping
    itself."""
    area = np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)
    w = np.clip(np.minimum(b[..., :, None, 2], b[..., None, :, 2]) - np.maximum(b[..., :, None, 0], b[..., None, :, 0]),
                0, None)
    h = np.clip(np.minimum(b[..., :, None, 3], b[..., None, :, 3]) - np.maximum(b[..., :, None, 1], b[..., None, :, 1]),
                0, None)
    inter = w * h
    overlaps = inter / (area[..., :, None] + area[..., None, :] - inter + 1e-9) >= iou
    diagonal = np.arange(b.shape[-2])
    overlaps[..., diagonal, diagonal] = True
    return overlaps


def _nms_clusters_boxwise(boxes: np.ndarray, iou: float, order: np.ndarray) -> list[np.ndarray]:
    """The same clusters, one kept box at a time; `order` is the boxes' indices, best score first."""
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    clusters = []
    while order.size:
        i = order[0]
        w = np.clip(np.minimum(boxes[i, 2], boxes[order, 2]) - np.maximum(boxes[i, 0], boxes[order, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[order, 3]) - np.maximum(boxes[i, 1], boxes[order, 1]), 0, None)
        inter = w * h
        overlap = inter / (area[i] + area[order] - inter + 1e-9) >= iou
        overlap[0] = True
        clusters.append(order[overlap])
        order = order[~overlap]
    return clusters


STEP_NMS_MAX = 64
"""Frames with up to this many candidates are suppressed together, from one padded IoU array per step; a
frame with more is suppressed on its own (nms_clusters): the padded array grows with the largest frame."""


def nms_clusters_frames(boxes: np.ndarray, scores: np.ndarray, frame: np.ndarray, iou: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nms_clusters of every frame's candidates (`frame`: each candidate's frame index) at once, in one flat form:
    `members` (candidate indices: each cluster's kept box, then the boxes it suppresses), `sizes` (each
    cluster's length) and the frame of each cluster; frames in order, each frame's clusters best first. The
    clusters are those nms_clusters gives frame by frame; the frames' greedy passes run side by side, so the
    host's cost is one pass over the largest frame, not one per frame."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((-scores, frame))  # by frame, then best first; stable, as nms_clusters' argsort
    counts = np.bincount(frame)
    rank = np.arange(n) - (np.cumsum(counts) - counts)[frame[order]]
    together = counts[frame[order]] <= STEP_NMS_MAX
    sel, rank = order[together], rank[together]
    group, slot = np.unique(frame[sel], return_inverse=True)
    width = int(rank.max()) + 1 if len(sel) else 0
    index = np.full((len(group), width), -1, np.int64)
    index[slot, rank] = sel
    valid = index >= 0
    b = np.zeros((len(group), width, 4), boxes.dtype)
    b[slot, rank] = boxes[sel]
    overlaps = _overlaps(b, iou) & valid[:, None, :]  # the IoU test of nms_clusters, element for element
    alive = valid.copy()
    head = np.full((len(group), width), -1, np.int64)
    for i in range(width):  # rank i of every frame at once: where it is still alive, it keeps a cluster
        keeps = alive[:, i]
        if not keeps.any():
            continue
        taken = overlaps[:, i, :] & alive & keeps[:, None]
        head[taken] = i
        alive &= ~taken
    g, j = np.nonzero(valid)
    by = np.lexsort((j, head[g, j], g))
    members, cluster_frame, cluster_head = index[g[by], j[by]], group[g[by]], head[g[by], j[by]]
    for f in np.flatnonzero(counts > STEP_NMS_MAX):  # crowded frames, one at a time
        local = np.flatnonzero(frame == f)
        clusters = nms_clusters(boxes[local], scores[local], iou)
        members = np.concatenate([members, local[np.concatenate(clusters)]])
        cluster_frame = np.concatenate([cluster_frame, np.full(sum(map(len, clusters)), f)])
        cluster_head = np.concatenate([cluster_head, np.repeat(np.arange(len(clusters)), list(map(len, clusters)))])
    if len(members) != len(by):
        by = np.lexsort((cluster_head, cluster_frame))  # stable: each cluster keeps its order
        members, cluster_frame, cluster_head = members[by], cluster_frame[by], cluster_head[by]
    first = np.flatnonzero(np.concatenate([[True], (cluster_frame[1:] != cluster_frame[:-1])
                                           | (cluster_head[1:] != cluster_head[:-1])]))
    return members, np.diff(np.append(first, len(members))), cluster_frame[first]


def _of_frames(part: Sequence[int], runs: Sequence[Candidates]) -> list[Candidates]:
    """Runs' candidates with each one's image of the run replaced by the frame it is (`part`: the frames of the
    run's images, in order)."""
    index = np.asarray(part, np.int64)
    return [(boxes, scores, kps, index[frame]) for boxes, scores, kps, frame in runs]


def kernel_rows_as_candidates(rows: np.ndarray, n_keypoints: int, n_anchors: int) -> RawCandidates:
    """The decoding kernel's rows (engines.cuda_ops.candidate_rows: [x0 y0 x1 y1 score kps... flat_index]) as a
    run's candidates: boxes, scores, keypoints (N x K x 2, K = 0 too) and the batch image of each."""
    k = n_keypoints
    flat = rows[:, 5 + 2 * k].astype(np.int64)
    return rows[:, :4], rows[:, 4], rows[:, 5:5 + 2 * k].reshape(len(rows), k, 2), flat // n_anchors


def _kernel_decodes(scores: Array) -> bool:
    """Whether a run's B x A scores are few enough for the decoding kernel (engines.cuda_ops)."""
    from engines import cuda_ops

    return cuda_ops.fits_flat_index(int(scores.size))


@dataclass
class BlazeDetector:
    """Shared machinery of the detectors: levels of a frame on canvases, batching (GPU batches padded to
    one shape), thresholding on the array module, suppression on the host."""

    session: Session
    anchors: AnchorSpec
    n_keypoints: int
    score_threshold: float
    nms_iou: float = 0.3
    batch_size: int = 4
    """Frames per model run. On a GPU every run has exactly this many (padded with black images): the
    runtime sets up each input shape once (ONNX Runtime's CUDA provider: seconds per shape)."""
    min_box: float = 0.0
    """Boxes narrower than this (model pixels) are below what the model finds reliably."""
    fine_tiles: bool = False
    """Run the finest pyramid level on tiles over regions of each frame (detect's `regions`) instead of over
    whole frames: the finest level is most of a frame's cost and only the smallest faces need it."""
    fine_runs: dict[str, int] = field(default_factory=lambda: {"tiles": 0, "whole": 0}, repr=False)
    """With fine_tiles: the finest level's tiles run and whole levels run so far (what guided search cost)."""
    _anchor_cache: dict[tuple[int, int, int], Array] = field(default_factory=dict, repr=False)
    _plans: dict[tuple[int, int], list[Level]] = field(default_factory=dict, repr=False)
    _prepared: set[tuple[int, int]] = field(default_factory=set, repr=False)
    _prepare_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return self.anchors.size

    def _xp(self) -> ModuleType:
        return session_array_module(self.session)

    def _anchor_array(self, xp: ModuleType, height: int, width: int) -> Array:
        key = (id(xp), height, width)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = xp.asarray(self.anchors.centres(height, width))
        return self._anchor_cache[key]

    def plan(self, height: int, width: int) -> list[Level]:
        """The pyramid levels of a height x width frame, finest first (cached per frame size)."""
        key = (height, width)
        if key not in self._plans:
            self._plans[key] = self._plan(height, width)
        return self._plans[key]

    def _plan(self, height: int, width: int) -> list[Level]:
        raise NotImplementedError

    def input_shapes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The model input shape of each pyramid level of a height x width frame, as run on a GPU (batches
        padded to batch_size)."""
        levels = self.plan(height, width)
        shapes = [(self.batch_size, level.canvas_h, level.canvas_w, 3) for level in levels]
        if self.fine_tiles and len(levels) > 1:  # tiles, or the whole finest level when tiles would cost more
            fine = levels[0]
            return [(self.batch_size, FINE_TILE, FINE_TILE, 3), (FINE_CANVAS_BATCH, fine.canvas_h, fine.canvas_w, 3),
                    *shapes[1:]]
        return shapes

    def prepare(self, height: int, width: int) -> None:
        """On a GPU, set up the runtime for every level of a height x width frame, the levels side by side
        (one thread each), unless their set-up is held. ONNX Runtime's CUDA provider spends seconds on the
        first run of each input shape (finalising cuDNN plans), all at once here rather than level after level
        inside the first steps of a new frame size (side by side they overlapped once; with the current libraries
        they do not: Engines.warm_up). A size whose shapes the runtime has since evicted (it keeps
        MAX_SHAPE_SESSIONS per model) is set up again (docs/gpu.md, "What the GPU path does")."""
        xp = self._xp()
        if xp is np or not self._not_set_up(height, width):
            return
        with self._prepare_lock:  # a second model thread meeting the same new size waits for the first
            todo = self._not_set_up(height, width)
            if todo:
                side_by_side([partial(self._first_run, shape) for shape in todo], "vidx-prepare")
            self._prepared.add((height, width))

    def _not_set_up(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The input shapes of a frame size whose runtime set-up is not held. A runtime that keeps set-up per
        shape says which it holds (`shapes_set_up`); for any other, a size prepared once stays prepared."""
        shapes = self.input_shapes(height, width)
        held = getattr(self.session, "shapes_set_up", lambda: None)()
        if held is None:
            return [] if (height, width) in self._prepared else shapes
        return [shape for shape in shapes if shape not in held]

    def _first_run(self, shape: tuple[int, int, int, int]) -> None:
        xp = self._xp()  # the input is made in the running thread, on its stream
        self.session.run({"image": xp.zeros(shape, xp.uint8)})

    def detect(self, frames: Sequence[Array], regions: Sequence[np.ndarray | None] | None = None, *,
               small_batches: bool = False) -> list[Detections]:
        """Detections for each frame (HxWx3 uint8 RGB, numpy or CuPy).

        On a GPU, runs are padded to batch_size frames; with `small_batches`, fewer frames are padded only
        to the next power of two from a quarter of it (for callers that often pass a few frames: each of
        those input shapes is set up on its first run).

        With `fine_tiles` on, the coarser levels run first, over whole frames; then the finest pyramid level
        runs on tiles (FINE_TILE square, on a fixed grid): over each frame's `regions` (K x 4 boxes in frame
        pixels; an empty array: nowhere) and the faces the coarser levels found that it answers for too, or
        over the whole frame where a frame has None (or no regions are given). A frame whose tiles would
        cost more pixels than its whole level runs the whole level instead (on a GPU, FINE_CANVAS_BATCH
        frames to a run)."""
        return self.queue_detect(frames, small_batches=small_batches)(regions)

    def queue_detect(self, frames: Sequence[Array], *, small_batches: bool = False) -> Detecting:
        """`detect` in two halves: the runs of every level that runs over whole frames (all of them without
        `fine_tiles`) are queued now, for every batch of frames; the function returned takes the `regions` (only
        the finest level's tiles depend on them), waits for the runs and gives each frame's detections. On a
        GPU the runs go on while the caller does other work between the halves (another detector's results, the
        regions); on the CPU they are done at once."""
        if not frames:
            return lambda regions=None: []
        xp = self._xp()
        by_size: dict[tuple[int, int], list[int]] = {}
        for f, frame in enumerate(frames):
            by_size.setdefault((int(frame.shape[0]), int(frame.shape[1])), []).append(f)
        batches: list[tuple[list[int], list[Array], Level | None, Callable[[], list[Candidates]]]] = []
        for (height, width), members in by_size.items():
            self.prepare(height, width)
            levels = self.plan(height, width)
            tiled = self.fine_tiles and len(levels) > 1
            for start in range(0, len(members), self.batch_size):
                part = members[start:start + self.batch_size]
                images = [frames[f] for f in part]
                pad = padded_batch(len(part), self.batch_size, max(1, self.batch_size // 4)) if small_batches else None
                batches.append((part, images, levels[0] if tiled else None,
                                self._queue_levels(xp, images, levels[int(tiled):], pad)))

        def finish(regions: Sequence[np.ndarray | None] | None = None) -> list[Detections]:
            # each batch's finest level is queued as soon as its coarser levels' candidates are in (behind the
            # later batches' coarser runs), and waited for once every batch's is queued
            queued = []
            for part, images, fine, coarse in batches:
                runs = coarse()
                finer: Callable[[], list[Candidates]] = list
                if fine is not None:
                    finer = self._queue_fine_level(xp, images, fine,
                                                   [regions[f] if regions is not None else None for f in part], runs)
                queued.append((part, runs, finer))
            found: list[Candidates] = []  # every run's, in run order
            for part, runs, finer in queued:
                found += _of_frames(part, runs + finer())
            return self._in_frames(self._merge(found, len(frames)), frames)

        return finish

    def _in_frames(self, detections: list[Detections], frames: Sequence[Array]) -> list[Detections]:
        """Each frame's detections as `detect` gives them (as they are here; a detector may clip them)."""
        return detections

    def _queue_fine_level(self, xp: ModuleType, frames: Sequence[Array], fine: Level,
                          regions: Sequence[np.ndarray | None], coarse: Sequence[Candidates]
                          ) -> Callable[[], list[Candidates]]:
        """The finest level's runs, queued (the function returned waits for them and gives their candidates, runs
        as the coarser levels' `coarse`): on tiles over each frame's regions and over the faces the coarser
        levels found that the finest level answers for too (its candidates sharpen their boxes and keypoints in
        the weighted suppression), or over the whole frame where its regions are None."""
        plan = self._fine_plan(fine, regions, coarse)
        # a frame whose tiles cost more pixels than its whole level runs the whole level (the same choice on
        # every device, so that a CPU and a GPU see the same inputs)
        runs_whole = np.bincount(plan[:, 0], minlength=len(frames)) * FINE_TILE ** 2 >= fine.canvas_h * fine.canvas_w
        whole = np.flatnonzero(runs_whole).tolist()
        chunk = FINE_CANVAS_BATCH if xp is not np else max(1, len(whole))
        queued = []
        for start in range(0, len(whole), chunk):
            part = whole[start:start + chunk]
            queued.append((part, self._queue_levels(xp, [frames[k] for k in part], [fine], pad_to=chunk)))
        plan = plan[~runs_whole[plan[:, 0]]]
        with self._count_lock:  # two model threads may count at once (not _prepare_lock: held for seconds)
            self.fine_runs["whole"] += len(whole)
            self.fine_runs["tiles"] += len(plan)
        queued.append((list(range(len(frames))), self._queue_tiles(xp, frames, fine, plan)))

        def candidates() -> list[Candidates]:
            return [run for part, result in queued for run in _of_frames(part, result())]

        return candidates

    @staticmethod
    def _fine_plan(fine: Level, regions: Sequence[np.ndarray | None], coarse: Sequence[Candidates]) -> np.ndarray:
        """The finest level's tiles (tile_plan rows: frame, x, y): over the whole level where a frame's regions
        are None, else over its regions and then the faces the coarser levels found in it that are small
        enough for the finest level to answer for too."""
        rects, owner = [], []
        for k, boxes in enumerate(regions):
            boxes = (np.array([[0, 0, fine.width, fine.height]], np.float32) if boxes is None
                     else np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(fine.scale))
            rects.append(boxes)
            owner.append(np.full(len(boxes), k, np.int64))
        if coarse:
            guided = np.asarray([boxes is not None for boxes in regions], bool)
            seen = np.concatenate([boxes for boxes, _, _, _ in coarse])
            seen_frame = np.concatenate([frame for _, _, _, frame in coarse])
            keep = ((seen[:, 2] - seen[:, 0]) * fine.scale <= fine.max_box) & guided[seen_frame]
            rects.append(seen[keep] * np.float32(fine.scale))
            owner.append(seen_frame[keep])
        order = np.argsort(np.concatenate(owner), kind="stable")  # each frame's regions before its faces
        return tile_plan(np.concatenate(rects)[order], np.concatenate(owner)[order], fine.width, fine.height)

    def _level_candidates(self, xp: ModuleType, frames: Sequence[Array], levels: Sequence[Level],
                          pad_to: int | None = None) -> list[Candidates]:
        """Candidates of whole levels (at most batch_size frames; on a GPU padded to `pad_to`, else to
        batch_size), in frame pixels, one entry per level."""
        return self._queue_levels(xp, frames, levels, pad_to)()

    def _queue_levels(self, xp: ModuleType, frames: Sequence[Array], levels: Sequence[Level],
                      pad_to: int | None = None) -> Callable[[], list[Candidates]]:
        """`_level_candidates` with every level's run queued first: the function returned waits for them and
        gives the candidates (on a GPU the runs go on without the host between them)."""
        if not frames or not levels:
            return list
        batches = list(self.level_batches(xp, frames, levels, pad_to))  # all placed before the first run
        queued = [(level, self._queue(batch, level)) for level, batch in zip(levels, batches, strict=True)]

        def candidates() -> list[Candidates]:
            out = []
            for level, result in queued:
                boxes, scores, kps, image = result()
                keep = image < len(frames)  # GPU batches are padded with black images
                cx, cy = self._sized_for(boxes, level, keep)
                keep &= (cx < level.width) & (cy < level.height)  # not centred on the black margin
                inv = np.float32(1.0 / level.scale)
                out.append((boxes[keep] * inv, scores[keep], kps[keep] * inv, image[keep]))
            return out

        return candidates

    def _queue_tiles(self, xp: ModuleType, frames: Sequence[Array], level: Level,
                     plan: np.ndarray) -> Callable[[], list[Candidates]]:
        """Runs a level on FINE_TILE tiles (`plan`: T x 3 rows of frame, x, y, a tile's top left in level pixels),
        all queued first; the function returned gives the candidates, in frame pixels, one entry per run. A
        candidate counts in a tile when its centre is on the tile's picture and at least TILE_EDGE from every
        tile edge inside the level image (a neighbouring tile, overlapping by TILE_OVERLAP, sees that face
        whole)."""
        if not len(plan):
            return list
        used = np.unique(plan[:, 0])
        scaled = self._level_images(xp, [frames[int(f)] for f in used], level)
        plan = np.concatenate([np.searchsorted(used, plan[:, :1]), plan[:, 1:]], 1)  # frames as slots of `scaled`
        tile_level = Level(level.scale, FINE_TILE, FINE_TILE, FINE_TILE, FINE_TILE)
        chunks = [plan[start:start + self.batch_size] for start in range(0, len(plan), self.batch_size)]
        batches = []  # all cut before the first run
        for chunk in chunks:
            if xp is not np:  # one gather for the chunk: a copy per tile cost the host ~4 ms a 32-frame step
                batches.append(cut_tiles(xp, scaled, chunk, max(self.batch_size, len(chunk))))
                continue
            batch = np.zeros((len(chunk), FINE_TILE, FINE_TILE, 3), np.uint8)
            for i, (k, x, y) in enumerate(chunk.tolist()):
                tile = scaled[k][y:y + TILE_PICTURE, x:x + TILE_PICTURE]
                batch[i, :tile.shape[0], :tile.shape[1]] = tile
            batches.append(batch)
        queued = [(chunk, self._queue(batch, tile_level)) for chunk, batch in zip(chunks, batches, strict=True)]

        def candidates() -> list[Candidates]:
            out = []
            for chunk, result in queued:
                boxes, scores, kps, image = result()
                keep = image < len(chunk)
                cx, cy = self._sized_for(boxes, level, keep)
                origin = chunk[np.minimum(image, len(chunk) - 1), 1:].astype(np.float32)
                keep &= _inside_tile(cx, origin[:, 0], level.width) & _inside_tile(cy, origin[:, 1], level.height)
                inv = np.float32(1.0 / level.scale)
                shift = np.concatenate([origin, origin], 1)
                frame = used[chunk[image[keep], 0]]
                out.append(((boxes[keep] + shift[keep]) * inv, scores[keep],
                            (kps[keep] + origin[keep][:, None, :]) * inv, frame))
            return out

        return candidates

    def _sized_for(self, boxes: np.ndarray, level: Level, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drops from `keep` (in place) the candidates too narrow for the model or outside the level's band of
        box widths; returns every candidate's centre (x, y) in the run's input pixels."""
        width_px = boxes[:, 2] - boxes[:, 0]
        keep &= (width_px >= max(self.min_box, level.min_box)) & (width_px <= level.max_box)
        return (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2

    def _level_images(self, xp: ModuleType, frames: Sequence[Array], level: Level) -> Sequence[Array]:
        """Each frame scaled to the level (height x width x 3, on the session's array module; on a GPU one
        N x height x width x 3 array)."""
        if xp is not np:
            from engines import cuda_ops

            canvas = xp.empty((len(frames), level.height, level.width, 3), xp.uint8)
            cuda_ops.place_level([xp.ascontiguousarray(xp.asarray(f)) for f in frames], level.width, level.height,
                                 canvas)
            return canvas
        return [resize(to_host(f), level.height, level.width) for f in frames]

    def level_batches(self, xp: ModuleType, frames: Sequence[Array], levels: Sequence[Level],
                       pad_to: int | None = None) -> Iterator[Array]:
        """For each level, finest first, the frames' model inputs: N x canvas_h x canvas_w x 3 uint8.

        Each level is scaled from the finer one before it (cheaper than from the full frame: a coarse level
        from the frame reads as many source pixels as a fine one, and antialiased either way), on the GPU
        by one kernel launch per level onto its canvas, on the CPU by Pillow. On the GPU the batch is padded
        with black images to `pad_to` (default batch_size), so that each level's model input always has one
        shape.
        """
        if xp is not np:
            from engines import cuda_ops

            n = max(pad_to or self.batch_size, len(frames))
            finer: tuple[Array, Level] | None = None
            for level in levels:
                out = xp.zeros((n, level.canvas_h, level.canvas_w, 3), xp.uint8)
                if finer is None:
                    cuda_ops.place_level([xp.ascontiguousarray(xp.asarray(f)) for f in frames], level.width,
                                         level.height, out)
                else:
                    canvas, above = finer
                    cuda_ops.place_coarser_level(canvas, len(frames), above.height, above.width, level.width,
                                                 level.height, out)
                yield out
                finer = out, level
            return
        current = [to_host(f) for f in frames]
        for level in levels:
            current = [resize(img, level.height, level.width) for img in current]
            batch = np.zeros((len(current), level.canvas_h, level.canvas_w, 3), np.uint8)
            for i, img in enumerate(current):
                batch[i, :level.height, :level.width] = img
            yield batch

    def _queue(self, batch: Array, level: Level) -> Callable[[], RawCandidates]:
        """Model + decoding + threshold for a batch of one level; the function returned gives the candidates in
        canvas pixels, on the host. On a GPU the model's run and the anchor decoding are queued on the current
        stream, and the function brings the candidates back in one transfer, waiting for them alone; on the
        CPU the work is done at once."""
        xp = array_module(batch)
        out = self.session.run({"image": batch})
        k = self.n_keypoints
        reg, scores = out["boxes"], out["scores"]
        if xp is not np and _kernel_decodes(scores):  # one kernel and one copy, not a dozen array operations
            from engines import cuda_ops

            queued = cuda_ops.queue_candidates(reg, scores, self._run_anchors(xp, level),
                                               threshold=self.score_threshold, n_keypoints=k)

            def collect() -> RawCandidates:
                rows = cuda_ops.candidate_rows(queued)
                if rows is None:  # more candidates than the kernel had room for
                    return self._decode(xp, reg, scores, level)
                return kernel_rows_as_candidates(rows, k, int(scores.shape[1]))

            return collect
        done = self._decode(xp, reg, scores, level)
        return lambda: done

    def _run_anchors(self, xp: ModuleType, level: Level) -> Array | None:
        """The anchor centres a run's regressors are relative to (None: the graph decodes its boxes itself)."""
        return self._anchor_array(xp, level.canvas_h, level.canvas_w)

    def _decode(self, xp: ModuleType, reg: Array, scores: Array, level: Level) -> RawCandidates:
        """Anchor decoding and threshold with array operations (numpy, or CuPy past the kernel's room)."""
        k = self.n_keypoints
        b_idx, a_idx = xp.nonzero(scores >= self.score_threshold)
        r = reg[b_idx, a_idx]
        a = self._anchor_array(xp, level.canvas_h, level.canvas_w)[a_idx]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        boxes = xp.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2, cy + r[:, 3] / 2], 1)
        kps = r[:, 4:4 + 2 * k] + xp.tile(a, (1, k))
        packed = xp.concatenate([boxes, scores[b_idx, a_idx][:, None], kps, b_idx[:, None].astype(boxes.dtype)],
                                1).astype(xp.float32)
        host = to_host(packed)
        return (host[:, :4], host[:, 4], host[:, 5:5 + 2 * k].reshape(-1, k, 2),
                host[:, 5 + 2 * k].astype(np.int64))

    def _merge(self, found: Sequence[Candidates], n_frames: int) -> list[Detections]:
        """Each of `n_frames` frames' detections from the candidates of every run (`found`), every frame's
        suppression at once (nms_clusters_frames)."""
        if not sum(len(scores) for _, scores, _, _ in found):
            return [Detections.empty(self.n_keypoints) for _ in range(n_frames)]
        boxes, scores, kps, frame = (np.concatenate(p) for p in zip(*found, strict=True))
        members, sizes, cluster_frame = nms_clusters_frames(boxes, scores, frame, self.nms_iou)
        starts = np.cumsum(sizes) - sizes
        merged = self._blend(boxes, scores, kps, members, sizes, starts)
        ends = np.cumsum(np.bincount(cluster_frame, minlength=n_frames))
        return [Detections(*(a[lo:hi] for a in merged)) for lo, hi in zip(ends - np.diff(ends, prepend=0), ends,
                                                                          strict=True)]

    def _blend(self, boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray, members: np.ndarray, sizes: np.ndarray,
               starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One detection per cluster (`members` from `starts`, `sizes` long, kept box first): MediaPipe's weighted
        suppression, the score-weighted mean of the candidates the cluster holds (neighbouring anchors, adjacent
        levels) with the best one's score. Blending steadies the keypoints that alignment depends on: a 3-7 px
        shift of a portrait moved its embedding by up to 0.22 with the best candidate alone, 0.14 blended
        (docs/models.md)."""
        weight = scores[members] / np.repeat(np.add.reduceat(scores[members], starts), sizes)
        out_boxes = np.add.reduceat(boxes[members] * weight[:, None], starts)
        out_kps = np.add.reduceat(kps[members] * weight[:, None, None], starts)
        return out_boxes.astype(np.float32), scores[members[starts]], out_kps.astype(np.float32)


FACE_ANCHORS = AnchorSpec(size=192, strides=(4,), per_cell=(1,))
FACE_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
"""Subject's right and left: the right eye appears on the image's left."""
MODEL_MIN_FACE_PX = 14.0
"""Smallest face width (model pixels) BlazeFace full-range finds reliably (measured on 192x192 inputs:
14-96 px found at 100% away from the bottom-right corner; see docs/models.md)."""
MODEL_MAX_FACE_PX = 96.0
"""Largest face width (model pixels) it finds reliably; from ~104 px some are missed."""
FINEST_FACE_PX = 16.8
"""The finest level scales the smallest face asked for (`min_face_px`) to this width. A single view of a
face at 14 px is found less often than the several overlapping tile views of the old tiled pyramid gave;
at 16.8 px a single view finds more (docs/models.md, "Face size range")."""
LEVEL_STEP = 2.0
"""Scale ratio between pyramid levels. The model's reliable range (14-96 px) spans ~6.9x, so a step of 3
would do in principle, and found as many synthetic faces; but a fine level must then answer for boxes up
to ~126 model px, where clutter in obama.jpg scored 0.68, and narrowing that band to 63 px lost a t1.jpg
face (0.85 at one level, 0.41 at the next). With a step of 2 the band is 70 px and the photos' best
clutter 0.54, for 18% more pixels (docs/measurements/detector_recall_levels_cpu_2core.txt)."""
LEVEL_BAND = 2.5
"""A level answers for faces up to LEVEL_BAND x MODEL_MIN_FACE_PX times its scale step (70 model px at a
step of 2); larger boxes at a fine level were mostly clutter (a 0.68 one in obama.jpg) and belong to the
coarser level, which sees such faces at 35 px or more."""
CORNER_MARGIN = 16
"""Black pixels right of and below each level: BlazeFace misses faces of up to ~24 px centred within
W/2 + 6 px of its input's bottom-right corner (docs/models.md)."""


class FaceDetector(BlazeDetector):
    """BlazeFace full-range over an image pyramid, so that small faces in large frames are found."""

    def __init__(self, session: Session, *, score_threshold: float = 0.65, min_face_px: int = 24,
                 batch_size: int = 4, fine_tiles: bool = False):
        super().__init__(session, FACE_ANCHORS, len(FACE_KEYPOINTS), score_threshold, batch_size=batch_size,
                         min_box=MODEL_MIN_FACE_PX * 0.8, fine_tiles=fine_tiles)
        self.min_face_px = min_face_px

    def head_regions(self, person_boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """Where in a height x width frame the faces that only the finest level finds can be, given the people
        found in it (K x 4 boxes): the head end of each person small enough for their face to be under what
        the coarser levels find. The smallest face a box can hold: a tenth of its height for a standing
        person (box at least twice as tall as wide); otherwise (seated, head and shoulders, lying) a fifth of
        its width, but never over a quarter of its height. A standing person's head is in the top fifth of
        the box, another's in the top half; the regions reach a little beyond both. Frame pixels, K' x 4."""
        levels = self.plan(height, width)
        b = np.asarray(person_boxes, np.float32).reshape(-1, 4)
        if len(levels) < 2:
            return b
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        smallest_face = np.where(h >= 2 * w, h / 10, np.maximum(h / 10, np.minimum(w / 5, h / 4)))
        small = smallest_face < MODEL_MIN_FACE_PX / levels[1].scale
        b, w, h = b[small], w[small], h[small]
        reach = np.where(h >= 2 * w, 0.3, 0.6) * h
        return np.stack([b[:, 0] - 0.15 * w, b[:, 1] - 0.1 * h, b[:, 2] + 0.15 * w, b[:, 1] + reach], 1)

    def _plan(self, height: int, width: int) -> list[Level]:
        """Finest level first; coarser levels, LEVEL_STEP apart, until a face as large as the frame's short
        side is within the model's reliable range."""
        scales = [min(1.0, FINEST_FACE_PX / self.min_face_px)]
        while min(height, width) * scales[-1] > MODEL_MAX_FACE_PX:
            scales.append(scales[-1] / LEVEL_STEP)
        return plan_levels(height, width, scales, align=self.anchors.align, margin=CORNER_MARGIN,
                           band=LEVEL_BAND * MODEL_MIN_FACE_PX)


PERSON_ALIGN = 32
"""YOLOv3-tiny's total stride: its input sides must be multiples of it."""
PERSON_LONG_SIDE = 768
"""Long side of the person detector's fine level (frames are scaled to it at their own aspect). On
vtest.avi (768x576, 4-9 pedestrians) 768 found 5.47 people per frame, 896 5.51 at 1.5x the time, and 640's
higher count held stones (docs/models.md)."""
PERSON_COARSE_SIDE = 416
"""Long side of the coarse level (YOLOv3-tiny's training size): people filling much of the frame (t1.jpg's
six at a table) are found there; at 768 only 4 of the 6 were (docs/models.md)."""
PERSON_COARSE_MIN_BOX = 48.0
"""Narrowest box (coarse-level pixels) the coarse level answers for: below it, it added boxes around two
small pedestrians walking together on vtest.avi, and the fine level finds such people one by one."""
PERSON_NMS_IOU = 0.45
"""Darknet's own NMS threshold for YOLO: people side by side overlap more than faces do."""


class PersonDetector(BlazeDetector):
    """YOLOv3-tiny (COCO person class) on two levels: the frame scaled so that its long side is `long_side`,
    and so that it is `coarse_side` (the coarse level answering for large people only), each at the top left
    of a canvas whose sides are multiples of 32. The graph decodes its heads itself
    (engines.convert.darknet_onnx): `boxes` in canvas pixels and `scores`; here they are thresholded on the
    session's array module and suppressed on the host. People have no keypoints (K = 0)."""

    def __init__(self, session: Session, *, score_threshold: float = 0.4, long_side: int = PERSON_LONG_SIDE,
                 coarse_side: int = PERSON_COARSE_SIDE, batch_size: int = 4):
        if min(long_side, coarse_side) < PERSON_ALIGN:
            raise ValueError(f"the person detector's levels need a long side of at least {PERSON_ALIGN} px, "
                             f"got {long_side} and {coarse_side}")
        # the graph decodes its own anchors: the spec only carries the input size and the canvas alignment
        super().__init__(session, AnchorSpec(size=long_side, strides=(32, 16), per_cell=(3, 3), align=PERSON_ALIGN),
                         0, score_threshold, nms_iou=PERSON_NMS_IOU, batch_size=batch_size)
        self.long_side = long_side
        self.coarse_side = coarse_side

    def _plan(self, height: int, width: int) -> list[Level]:
        long = max(height, width)
        if self.coarse_side * 1.25 > self.long_side:  # one level is enough when the two are this close
            return plan_levels(height, width, [self.long_side / long], align=PERSON_ALIGN, margin=0)
        fine, coarse = plan_levels(height, width, [self.long_side / long, self.coarse_side / long],
                                   align=PERSON_ALIGN, margin=0)
        return [fine, dataclasses.replace(coarse, min_box=PERSON_COARSE_MIN_BOX)]

    def _run_anchors(self, xp: ModuleType, level: Level) -> Array | None:
        return None  # the graph decodes its boxes itself

    def _decode(self, xp: ModuleType, reg: Array, scores: Array, level: Level) -> RawCandidates:
        """Threshold with array operations (numpy, or CuPy past the kernel's room); `reg` holds boxes."""
        b_idx, a_idx = xp.nonzero(scores >= self.score_threshold)
        packed = xp.concatenate([reg[b_idx, a_idx], scores[b_idx, a_idx][:, None],
                                 b_idx[:, None].astype(reg.dtype)], 1).astype(xp.float32)
        host = to_host(packed)
        return host[:, :4], host[:, 4], np.zeros((len(host), 0, 2), np.float32), host[:, 5].astype(np.int64)

    def _blend(self, boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray, members: np.ndarray, sizes: np.ndarray,
               starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Plain suppression: each cluster's best box as it is (YOLO's boxes are not blended)."""
        keep = members[starts]
        return boxes[keep], scores[keep], kps[keep]

    def _in_frames(self, detections: list[Detections], frames: Sequence[Array]) -> list[Detections]:
        """Boxes clipped to their frame, best first (people: whole frames, `regions` is for detectors with fine
        tiles)."""
        out = []
        for dets, frame in zip(detections, frames, strict=True):
            h, w = int(frame.shape[0]), int(frame.shape[1])
            boxes = np.clip(dets.boxes, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
            out.append(Detections(boxes, dets.scores.astype(np.float32), dets.keypoints))
        return out
