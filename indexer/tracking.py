"""Linking faces across samples of one video into face tracks.

A face joins the live track whose embedding is nearest (below a threshold, dlib's 0.6 scale) and
whose last sighting is recent enough; where the face overlaps the track's last box, a looser
threshold applies (a head turning changes the descriptor more than it moves the face). Faces that
could not be embedded (too small or blurred) join by box overlap only. Assignment is greedy by
distance, which for the handful of faces in a frame matches the optimal assignment in practice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schemas.config import TrackingConfig

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
