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
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.config import PersonTrackingConfig, TrackingConfig

POSITION_ONLY_IOU = 0.3

Box = Sequence[float]
"""x0 y0 x1 y1 as plain floats: with numpy scalars instead, a frame's tracking took 2.2-2.5x as long
(tools/tracking_cost.py)."""


def box_iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float:
    ax0, ay0, ax1, ay1 = _floats(a)
    bx0, by0, bx1, by1 = _floats(b)
    w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = w * h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _floats(box: Box | np.ndarray) -> list[float]:
    return box.tolist() if isinstance(box, np.ndarray) else list(box)


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
        face_boxes = boxes.tolist()
        last_boxes = [tr.last_box.tolist() for tr in self._live]
        described = [j for j, tr in enumerate(self._live) if tr.n_embedded > 0]
        means = np.stack([self._live[j].embedding for j in described]) if described else None
        for i, emb in enumerate(embeddings):
            if emb is None or means is None:
                continue
            for j, d in zip(described, np.linalg.norm(means - emb, axis=1).tolist(), strict=True):
                iou = box_iou(face_boxes[i], last_boxes[j])
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
            best = max(((box_iou(face_boxes[i], last_boxes[j]), j) for j in range(len(self._live)) if j not in taken),
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
    out = []
    for (x0, _, x1, _), (eye_r, eye_l, nose), sharp, score in zip(
            boxes.tolist(), keypoints[:, :3, 0].tolist(), sharpness.tolist(), scores.tolist(), strict=True):
        frontal = 1.0 - _unit(abs((nose - eye_r) / max(eye_l - eye_r, 1e-3) - 0.5) * 2)
        out.append(0.35 * _unit((x1 - x0) / 150.0) + 0.25 * _unit(sharp / 200.0) + 0.25 * frontal + 0.15 * score)
    return np.asarray(out, np.float32)


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0)


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
    face_track: int = -1
    """The face track of the latest face seen on this person (-1: none yet)."""

    def predicted(self, t: float) -> list[float]:
        """The last box, moved to where its centre is heading at time t."""
        vx, vy = self.velocity.tolist()
        dt = t - self.end_s
        x0, y0, x1, y1 = self.last_box.tolist()
        return [x0 + vx * dt, y0 + vy * dt, x1 + vx * dt, y1 + vy * dt]


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
        return (np.asarray([tr.predicted(t) for tr in seen], np.float32),
                np.asarray([tr.track_index for tr in seen], np.int64))

    def update(self, t: float, rows: list[int], boxes: np.ndarray, scores: np.ndarray,
               faces: Sequence[int] | None = None) -> list[int]:
        """Assign the person boxes of one sample (taken at time t) to tracks; returns a track index per box.

        `faces`: the face track of the face on each box (-1: none). A box whose face is the one its track last
        showed continues that track first (and from up to twice as far: people seated close together swap
        boxes' shapes from sample to sample), a box showing another face than the track's goes last; without
        faces, the nearest box to where each track was heading continues it."""
        self._live = [tr for tr in self._live if t - tr.end_s <= self.config.max_gap_s]
        self._last_s = t
        pairs = []
        found = boxes.tolist()
        face_of = list(faces) if faces is not None else [-1] * len(rows)
        for j, tr in enumerate(self._live):
            guess = tr.predicted(t)
            for i in range(len(rows)):
                shift = _shift(found[i], guess)
                same_face = face_of[i] >= 0 and face_of[i] == tr.face_track
                reach = self.config.max_shift * (2.0 if same_face else 1.0)
                if shift <= reach or box_iou(found[i], guess) >= self.config.min_iou:
                    rank = 0 if same_face else 2 if face_of[i] >= 0 and tr.face_track >= 0 else 1
                    pairs.append((rank, shift, i, j))
        assigned = [-1] * len(rows)
        taken: set[int] = set()
        for _, _, i, j in sorted(pairs):
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
            if face_of[i] >= 0:
                tr.face_track = face_of[i]
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


def _shift(box: Box, guess: Box) -> float:
    """Distance between two boxes' centres over the geometric mean of their sizes; infinite when their widths
    or heights differ by more than 2x (a child and an adult, a near and a far person)."""
    bx0, by0, bx1, by1 = box
    gx0, gy0, gx1, gy1 = guess
    bw, bh, gw, gh = bx1 - bx0, by1 - by0, gx1 - gx0, gy1 - gy0
    if min(bw, bh, gw, gh) <= 0 or not (0.5 <= bw / gw <= 2.0 and 0.5 <= bh / gh <= 2.0):
        return math.inf
    dx = (bx0 + bx1 - gx0 - gx1) / 2
    dy = (by0 + by1 - gy0 - gy1) / 2
    return math.hypot(dx, dy) / math.sqrt(math.sqrt(bw * bh * gw * gh))


def person_of_faces(face_boxes: np.ndarray, person_boxes: np.ndarray) -> np.ndarray:
    """For each face, the index of the person box it belongs to, or -1: the face's centre lies in the person
    box's upper half and most of the face is inside it; of several such boxes, the narrowest wins (in a crowd
    a wide box can cover someone else's head)."""
    out = np.full(len(face_boxes), -1, np.int64)
    if not len(face_boxes) or not len(person_boxes):
        return out
    people = np.asarray(person_boxes).tolist()
    for k, (fx0, fy0, fx1, fy1) in enumerate(np.asarray(face_boxes).tolist()):
        cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
        area = max((fx1 - fx0) * (fy1 - fy0), 1e-6)
        narrowest = math.inf
        for j, (px0, py0, px1, py1) in enumerate(people):
            if not (px0 <= cx <= px1 and py0 <= cy <= (py0 + py1) / 2) or px1 - px0 >= narrowest:
                continue
            inside = max(min(fx1, px1) - max(fx0, px0), 0.0) * max(min(fy1, py1) - max(fy0, py0), 0.0)
            if inside / area >= 0.6:
                out[k], narrowest = j, px1 - px0
    return out
