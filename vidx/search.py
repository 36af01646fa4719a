"""Find this person: a query face against the face tracks of the index, answered as appearances.

Scores are calibrated on dlib's L2 scale: score = 1 / (1 + exp((d - 0.6) / 0.05)), so 0.5 is dlib's
same-person boundary (L2 = 0.6), 0.95 is L2 = 0.45 and 0.05 is L2 = 0.75 (see docs/search.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from engines.errors import ImageError
from engines.images import load_rgb
from engines.loader import Engines
from jobs.catalog import Catalog
from schemas.sql import Track, Video, embedding_from_bytes

SCORE_CENTRE = 0.6
SCORE_WIDTH = 0.05
DEFAULT_THRESHOLD = 0.5


def score_from_distance(d: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp((np.asarray(d, np.float64) - SCORE_CENTRE) / SCORE_WIDTH))


def distance_from_score(score: float) -> float:
    score = min(max(score, 1e-9), 1 - 1e-9)
    return SCORE_CENTRE + SCORE_WIDTH * math.log(1 / score - 1)


@dataclass
class Hit:
    """One appearance: a person seen in a video from start_s to end_s (tracks that touch are merged)."""

    video: str
    start_s: float
    end_s: float
    score: float
    distance: float
    track_id: int
    track_ids: list[int]
    thumbnail: str | None
    video_id: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def query_embedding(engines: Engines, photo: Path, face: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The descriptor of the chosen face of a photo (the largest by default)."""
    image = load_rgb(photo)
    dets = engines.faces.detect([image])[0]
    if not len(dets):
        raise ImageError("no face found in the photo", path=photo,
                         hint="use a photo where the face is visible, frontal and at least ~40 pixels wide")
    areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
    order = np.argsort(-areas)
    if face is not None and not (1 <= face <= len(order)):
        raise ImageError(f"--face {face} asked for, but the photo has {len(order)} face(s)", path=photo)
    k = int(order[(face or 1) - 1])
    emb, _ = engines.embedder.embed([image], [0], dets.keypoints[k:k + 1])
    return emb[0], {"faces_in_photo": len(order), "face": (face or 1), "box": dets.boxes[k].round(1).tolist()}


def search_tracks(catalog: Catalog, query: np.ndarray, *, top: int = 20, threshold: float = DEFAULT_THRESHOLD,
                  video_glob: str | None = None, gap_s: float = 1.0) -> list[Hit]:
    """Exact nearest tracks of the live runs, merged into appearances, best first."""
    with catalog.session() as s:
        stmt = (select(Track.id, Track.video_id, Track.start_s, Track.end_s, Track.embedding, Track.thumbnail,
                       Video.path)
                .join(Video, Video.id == Track.video_id).where(Track.run_id == Video.run_id))
        if video_glob:
            stmt = stmt.where(Video.path.op("GLOB")(video_glob) if catalog.url.startswith("sqlite")
                              else Video.path.like(video_glob.replace("*", "%").replace("?", "_")))
        rows = s.execute(stmt).all()
    if not rows:
        return []
    emb = np.stack([embedding_from_bytes(r.embedding) for r in rows])
    dist = np.linalg.norm(emb - query[None, :], axis=1)
    scores = score_from_distance(dist)
    keep = np.nonzero(scores >= threshold)[0]
    by_video: dict[int, list[int]] = {}
    for i in keep:
        by_video.setdefault(rows[i].video_id, []).append(int(i))
    hits: list[Hit] = []
    for idx in by_video.values():
        idx.sort(key=lambda i: rows[i].start_s)
        group: list[int] = []
        for i in idx:
            if group and rows[i].start_s > max(rows[j].end_s for j in group) + gap_s:
                hits.append(_merge(rows, group, dist, scores))
                group = []
            group.append(i)
        if group:
            hits.append(_merge(rows, group, dist, scores))
    hits.sort(key=lambda h: (-h.score, h.video, h.start_s))
    return hits[:top]


def _merge(rows: list[Any], group: list[int], dist: np.ndarray, scores: np.ndarray) -> Hit:
    best = max(group, key=lambda i: scores[i])
    return Hit(video=rows[best].path, start_s=float(min(rows[i].start_s for i in group)),
               end_s=float(max(rows[i].end_s for i in group)), score=round(float(scores[best]), 4),
               distance=round(float(dist[best]), 4), track_id=int(rows[best].id),
               track_ids=[int(rows[i].id) for i in group], thumbnail=rows[best].thumbnail,
               video_id=int(rows[best].video_id))
