"""Linking detections across samples of one video: faces into face tracks, people into person tracks.

A face joins the live track whose embedding is nearest (below a threshold, dlib's 0.6 scale) and
whose last sighting is recent enough; where the face overlaps the track's last box, a looser
threshold applies (a head turning changes the descriptor more than it moves the face). Faces that
could not be embedded (too small or blurred) join by box overlap only. Assignment is greedy by
distance, which for the handful of faces in a frame matches the optimal assignment in practice.

A person box joins the live person track whose box, moved on by the track's recent velocity, is nearest
(centre distance over the box's size; boxes of very different sizes never match); people carry no
descriptor, so position and motion are all there is. A face inside a person's box
ties its face track to that person track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from schemas.config import PersonTrackingConfig, TrackingConfig

POSITION_ONLY_IOU = 0.3


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    start_s: float
    end_s: float
    last_box: np.ndarray
    embedding_sum: np.ndarray
    n_embedded: int = 0
    n_faces: int = 0
    best_quality: float = -1.0
    best_face: int = -1
    """Row (in the video's face list) of the best face seen: largest, sharpest, most frontal."""

    @property
    def embedding(self) -> np.ndarray:
        return (self.embedding_sum / max(self.n_embedded, 1)).astype(np.float32)


@dataclass
class FaceTracker:
    config: TrackingConfig
    tracks: list[Track] = field(default_factory=list)
    _live: list[Track] = field(default_factory=list)

    def update(self, t: float, rows: list[int], boxes: np.ndarray, embeddings: list[np.ndarray | None],
               quality: np.ndarray) -> list[int]:
        """Assign the faces of one sample (taken at time t) to tracks; returns a track id per face."""
        self._live = [tr for tr in self._live if t - tr.end_s <= self.config.max_gap_s]
        assigned: list[int] = [-1] * len(rows)
        taken: set[int] = set()
        pairs = []
        for i, emb in enumerate(embeddings):
            if emb is None:
                continue
            for j, tr in enumerate(self._live):
                if tr.n_embedded == 0:
                    continue
                d = float(np.linalg.norm(emb - tr.embedding))
                iou = box_iou(boxes[i], tr.last_box)
                limit = (self.config.max_embedding_distance_in_place if iou >= POSITION_ONLY_IOU
                         else self.config.max_embedding_distance)
                if d <= limit and iou >= self.config.min_iou:
                    pairs.append((d, i, j))
        for _, i, j in sorted(pairs):
            if assigned[i] < 0 and j not in taken:
                assigned[i] = j
                taken.add(j)
        for i, emb in enumerate(embeddings):
            if emb is not None or assigned[i] >= 0:
                continue
            best = max(((box_iou(boxes[i], tr.last_box), j) for j, tr in enumerate(self._live) if j not in taken),
                       default=(0.0, -1))
            if best[0] >= POSITION_ONLY_IOU:
                assigned[i] = best[1]
                taken.add(best[1])
        ids = []
        for i, row in enumerate(rows):
            emb = embeddings[i]
            if assigned[i] >= 0:
                tr = self._live[assigned[i]]
            elif emb is not None:
                tr = Track(len(self.tracks), t, t, boxes[i], np.zeros_like(emb, dtype=np.float64))
                self.tracks.append(tr)
                self._live.append(tr)
            else:
                ids.append(-1)
                continue
            tr.end_s = t
            tr.last_box = boxes[i]
            tr.n_faces += 1
            if emb is not None:
                tr.embedding_sum += emb
                tr.n_embedded += 1
                if quality[i] > tr.best_quality:
                    tr.best_quality = float(quality[i])
                    tr.best_face = row
            ids.append(tr.track_id)
        return ids


def face_quality(boxes: np.ndarray, keypoints: np.ndarray, sharpness: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A score for picking a track's thumbnail: large, sharp, frontal, confidently detected faces win."""
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    width = boxes[:, 2] - boxes[:, 0]
    eye_r, eye_l, nose = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2]
    eye_span = np.maximum(eye_l[:, 0] - eye_r[:, 0], 1e-3)
    frontal = 1.0 - np.clip(np.abs((nose[:, 0] - eye_r[:, 0]) / eye_span - 0.5) * 2, 0, 1)
    size = np.clip(width / 150.0, 0, 1)
    sharp = np.clip(sharpness / 200.0, 0, 1)
    return (0.35 * size + 0.25 * sharp + 0.25 * frontal + 0.15 * scores).astype(np.float32)


@dataclass
class PersonTrack:
    track_index: int
    start_s: float
    end_s: float
    last_box: np.ndarray
    velocity: np.ndarray
    """The box centre's motion (x, y) in pixels per second, from the last two sightings. The centre only: a
    box's size jitters from sample to sample (a stride, an arm, the detector's own noise), and carried
    forward as corner motion that jitter bent the predicted box out of shape and broke tracks apart."""
    n_detections: int = 0
    best_quality: float = -1.0
    best_row: int = -1
    """Row (in the video's person list) of the best sighting: largest, most confident."""

    def predicted(self, t: float) -> np.ndarray:
        """The last box, moved to where its centre is heading at time t."""
        dx, dy = self.velocity * (t - self.end_s)
        return self.last_box + np.array([dx, dy, dx, dy], np.float32)


@dataclass
class PersonTracker:
    """Links person boxes across samples by nearness to each live track's predicted box."""

    config: PersonTrackingConfig
    tracks: list[PersonTrack] = field(default_factory=list)
    _live: list[PersonTrack] = field(default_factory=list)
    _last_s: float | None = None
    """Time of the last update (the last sample the person detector ran on)."""

    def carried(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The people of the last update, moved on to time t along their tracks: boxes (K x 4) and track
        indices (K), for a sample the person detector did not run on."""
        seen = [tr for tr in self._live if tr.end_s == self._last_s]
        if not seen:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return (np.stack([tr.predicted(t) for tr in seen]).astype(np.float32),
                np.asarray([tr.track_index for tr in seen], np.int64))

    def update(self, t: float, rows: list[int], boxes: np.ndarray, scores: np.ndarray) -> list[int]:
        """Assign the person boxes of one sample (taken at time t) to tracks; returns a track index per box."""
        self._live = [tr for tr in self._live if t - tr.end_s <= self.config.max_gap_s]
        self._last_s = t
        pairs = []
        for j, tr in enumerate(self._live):
            guess = tr.predicted(t)
            for i in range(len(rows)):
                shift = _shift(boxes[i], guess)
                if shift <= self.config.max_shift or box_iou(boxes[i], guess) >= self.config.min_iou:
                    pairs.append((shift, i, j))
        assigned = [-1] * len(rows)
        taken: set[int] = set()
        for _, i, j in sorted(pairs):
            if assigned[i] < 0 and j not in taken:
                assigned[i] = j
                taken.add(j)
        out = []
        for i, row in enumerate(rows):
            box = boxes[i].astype(np.float32)
            if assigned[i] >= 0:
                tr = self._live[assigned[i]]
                dt = t - tr.end_s
                if dt > 0:
                    tr.velocity = ((_centre(box) - _centre(tr.last_box)) / dt).astype(np.float32)
            else:
                tr = PersonTrack(len(self.tracks), t, t, box, np.zeros(2, np.float32))
                self.tracks.append(tr)
                self._live.append(tr)
            tr.end_s, tr.last_box = t, box
            tr.n_detections += 1
            quality = float(np.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0)) * scores[i])
            if quality > tr.best_quality:
                tr.best_quality, tr.best_row = quality, row
            out.append(tr.track_index)
        return out

    def kept(self) -> list[PersonTrack]:
        """Tracks seen often enough to be a person rather than a passing false box."""
        return [tr for tr in self.tracks if tr.n_detections >= self.config.min_detections]


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float32)


def _shift(box: np.ndarray, guess: np.ndarray) -> float:
    """Distance between two boxes' centres over the geometric mean of their sizes; infinite when their widths
    or heights differ by more than 2x (a child and an adult, a near and a far person)."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    gw, gh = guess[2] - guess[0], guess[3] - guess[1]
    if min(bw, bh, gw, gh) <= 0 or not (0.5 <= bw / gw <= 2.0 and 0.5 <= bh / gh <= 2.0):
        return math.inf
    dx = (box[0] + box[2] - guess[0] - guess[2]) / 2
    dy = (box[1] + box[3] - guess[1] - guess[3]) / 2
    return float(math.hypot(dx, dy) / math.sqrt(math.sqrt(bw * bh * gw * gh)))


def person_of_faces(face_boxes: np.ndarray, person_boxes: np.ndarray) -> np.ndarray:
    """For each face, the index of the person box it belongs to, or -1: the face's centre lies in the person
    box's upper half and most of the face is inside it; of several such boxes, the narrowest wins (in a crowd
    a wide box can cover someone else's head)."""
    out = np.full(len(face_boxes), -1, np.int64)
    if not len(face_boxes) or not len(person_boxes):
        return out
    f, p = face_boxes[:, None, :], person_boxes[None, :, :]
    cx, cy = (f[..., 0] + f[..., 2]) / 2, (f[..., 1] + f[..., 3]) / 2
    upper = (cx >= p[..., 0]) & (cx <= p[..., 2]) & (cy >= p[..., 1]) & (cy <= (p[..., 1] + p[..., 3]) / 2)
    inter_w = np.clip(np.minimum(f[..., 2], p[..., 2]) - np.maximum(f[..., 0], p[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(f[..., 3], p[..., 3]) - np.maximum(f[..., 1], p[..., 1]), 0, None)
    face_area = np.maximum((f[..., 2] - f[..., 0]) * (f[..., 3] - f[..., 1]), 1e-6)
    inside = upper & (inter_w * inter_h / face_area >= 0.6)
    width = np.broadcast_to(p[..., 2] - p[..., 0], inside.shape)
    cost = np.where(inside, width, np.inf)
    best = np.argmin(cost, axis=1)
    found = np.isfinite(cost[np.arange(len(face_boxes)), best])
    out[found] = best[found]
    return out
