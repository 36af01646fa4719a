"""Find this person: query faces against the face tracks of the index, answered as appearances.

Scores are calibrated on dlib's L2 scale: score = 1 / (1 + exp((d - 0.6) / 0.05)). 0.5 means L2 = 0.6,
dlib's published same-person boundary (where, on LFW, a pair is as likely to be one person as two);
0.95 is L2 = 0.45 (typical for two photos of one person) and 0.05 is L2 = 0.75 (typical for two people).
The default threshold, 0.75 (L2 = 0.545), is stricter than the boundary because a search compares one
face with every track in the archive: see docs/search.md for the distances measured on real photos.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from catalog.db import Catalog
from engines.errors import ImageError
from engines.images import load_rgb
from engines.loader import Engines
from schemas.embeddings import embedding_from_bytes
from schemas.errors import InputError
from schemas.ids import face_track_id, parse_face_track_id, person_track_id
from schemas.sql import Run, Track, Video
from search.vector_index import VectorSearch, open_vector_search

SCORE_CENTRE = 0.6
SCORE_WIDTH = 0.05
DEFAULT_THRESHOLD = 0.75
DEFAULT_SAMPLE_INTERVAL_S = 0.5
MAX_CANDIDATES = 50_000


def score_from_distance(d: np.ndarray | float) -> np.ndarray:
    """Calibrated score in (0, 1) for an L2 distance between dlib descriptors (0.5 at L2 0.6)."""
    return 1.0 / (1.0 + np.exp((np.asarray(d, np.float64) - SCORE_CENTRE) / SCORE_WIDTH))


def distance_from_score(score: float) -> float:
    """The L2 distance at which a match has this score."""
    score = min(max(score, 1e-9), 1 - 1e-9)
    return SCORE_CENTRE + SCORE_WIDTH * math.log(1 / score - 1)


@dataclass
class Hit:
    """One appearance: a person seen in a video from start_s to end_s (tracks that touch are merged).

    track_id is the public id (schemas.ids) of the best-scoring face track of the appearance, track_ids all of
    them; person_track_id the person track (the body) that face was seen on, when one was; labelled says that
    a manual label (a fixed fact) puts the person there, person names who a label says the track is.
    """

    video: str
    start_s: float
    end_s: float
    score: float
    distance: float
    track_id: str
    track_ids: list[str]
    thumbnail: str | None
    video_id: int
    duration_s: float | None = None
    labelled: bool = False
    person: str | None = None
    person_track_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrackInfo:
    """A live track as search needs it (id: the SQL row, public_id: what users see)."""

    id: int
    public_id: str
    person_track_id: str | None
    video_id: int
    path: str
    start_s: float
    end_s: float
    thumbnail: str | None
    embedding: np.ndarray
    duration_s: float | None
    interval_s: float
    cluster_id: int | None = None


@dataclass
class Filters:
    """Which appearances a search keeps: a glob on the video path and a window of time in the video."""

    video_glob: str | None = None
    after_s: float | None = None
    before_s: float | None = None

    def keep(self, t: TrackInfo) -> bool:
        if self.video_glob and not (fnmatch.fnmatchcase(t.path, self.video_glob)
                                    or fnmatch.fnmatchcase(Path(t.path).name, self.video_glob)):
            return False
        if self.after_s is not None and t.end_s < self.after_s:
            return False
        return not (self.before_s is not None and t.start_s > self.before_s)


@dataclass
class QueryFace:
    """The face a photo search used: its descriptor, where it is in the photo, how many faces there were."""

    embedding: np.ndarray
    photo: Path
    box: list[float]
    face: int
    faces_in_photo: int
    about: dict[str, Any] = field(default_factory=dict)


def query_engines(store: Any, device: str = "auto") -> Engines:
    """The two models a photo query needs (face detector and embedder), not warmed up: one photo is not worth it.
    On a GPU they start quickly (RuntimeConfig.engine_start quick): a photo's shapes set up in seconds, not half a
    minute."""
    from engines.loader import load_engines
    from engines.runtime.base import cpu_cores
    from schemas.config import DetectionConfig, RuntimeConfig

    return load_engines(DetectionConfig(detect_persons=False),
                        RuntimeConfig(device=device, engine_start="quick"),  # type: ignore[arg-type]
                        store=store, warm_up=False, cpu_threads=cpu_cores())  # one photo at a time: every core


def _faces_by_size(engines: Engines, image: np.ndarray, photo: Path) -> tuple[Any, np.ndarray]:
    """The detections of a photo and their order by area, largest first (the numbering of `--face`)."""
    dets = engines.faces.detect([image])[0]
    if not len(dets):
        raise ImageError("no face found in the photo", path=photo,
                         hint="use a photo where the face is visible, frontal and at least ~40 pixels wide")
    areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
    return dets, np.argsort(-areas)


def photo_faces(engines: Engines, photo: Path) -> dict[str, Any]:
    """The faces of a photo as `--face` numbers them (1 = largest): boxes in pixels, and the photo's size."""
    image = load_rgb(photo)
    dets, order = _faces_by_size(engines, image, photo)
    return {"width": int(image.shape[1]), "height": int(image.shape[0]),
            "faces": [{"face": n, "box": [round(float(v), 1) for v in dets.boxes[k]]}
                      for n, k in enumerate(order.tolist(), 1)]}


def detect_query_face(engines: Engines, photo: Path, face: int | None = None) -> QueryFace:
    """The descriptor of the chosen face of a photo (faces numbered by size, 1 = largest)."""
    image = load_rgb(photo)
    dets, order = _faces_by_size(engines, image, photo)
    if face is not None and not (1 <= face <= len(order)):
        raise ImageError(f"--face {face} asked for, but the photo has {len(order)} face(s)", path=photo,
                         hint=f"choose a face from 1 (largest) to {len(order)}")
    k = int(order[(face or 1) - 1])
    emb, _ = engines.embedder.embed([image], [0], dets.keypoints[k:k + 1])
    if emb is None or len(emb) == 0 or not np.all(np.isfinite(emb[0])):
        raise ImageError("the face in the photo could not be described (too small or blurred)", path=photo)
    box = [float(v) for v in dets.boxes[k].round(1)]
    return QueryFace(np.asarray(emb[0], np.float32), photo, box, face or 1, len(order))


def query_embedding(engines: Engines, photo: Path, face: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The descriptor of the chosen face of a photo (the largest by default) and what was found."""
    q = detect_query_face(engines, photo, face)
    return q.embedding, {"faces_in_photo": q.faces_in_photo, "face": q.face, "box": q.box}


def open_search_index(catalog: Catalog, out_dir: str | None, *, index_dir: Path | None = None) -> VectorSearch:
    """The vector search of this SQL index: pgvector in the database where it has it, else the FAISS file
    index, refreshed (incrementally) if a job changed tracks since."""
    return open_vector_search(catalog, out_dir, index_dir=index_dir)


def load_tracks(catalog: Catalog, ids: Iterable[int]) -> dict[int, TrackInfo]:
    """Live tracks by id (ids of replaced runs are silently absent)."""
    ids = list(ids)
    out: dict[int, TrackInfo] = {}
    runs: dict[int, float] = {}
    with catalog.session() as s:
        for start in range(0, len(ids), 900):
            rows = s.execute(select(Track.id, Track.video_id, Track.track_index, Track.person_track_index,
                                    Track.start_s, Track.end_s, Track.thumbnail,
                                    Track.embedding, Track.cluster_id, Video.path, Video.duration_s, Video.run_id)
                             .join(Video, Video.id == Track.video_id)
                             .where(Track.run_id == Video.run_id, Track.id.in_(ids[start:start + 900]))).all()
            for r in rows:
                if r.run_id not in runs:
                    runs[r.run_id] = _sample_interval(s.get(Run, r.run_id))
                person = (person_track_id(r.video_id, r.person_track_index) if r.person_track_index is not None
                          else None)
                out[r.id] = TrackInfo(r.id, face_track_id(r.video_id, r.track_index), person, r.video_id, r.path,
                                      r.start_s, r.end_s, r.thumbnail,
                                      embedding_from_bytes(r.embedding), r.duration_s, runs[r.run_id], r.cluster_id)
    return out


def live_track_rows(catalog: Catalog, public_ids: Iterable[str]) -> dict[str, int]:
    """SQL row of each live face track named by its public id (`12-3`); ids that name no live track are
    absent. A malformed id is an InputError."""
    wanted = {parse_face_track_id(p): p for p in public_ids}
    out: dict[str, int] = {}
    with catalog.session() as s:
        for (video_id, index), public in wanted.items():
            row = s.scalar(select(Track.id).join(Video, Video.id == Track.video_id)
                           .where(Track.run_id == Video.run_id, Track.video_id == video_id,
                                  Track.track_index == index))
            if row is not None:
                out[public] = row
    return out


def _sample_interval(run: Run | None) -> float:
    """Seconds between two analysed frames for a run (the default when it sampled every or key frames)."""
    sampling = (run.params or {}).get("sampling", {}) if run is not None else {}
    if sampling.get("mode", "fps") == "fps" and sampling.get("fps"):
        return 1.0 / float(sampling["fps"])
    return DEFAULT_SAMPLE_INTERVAL_S


def search_index(catalog: Catalog, index: VectorSearch, queries: np.ndarray, *, top: int = 20,
                 threshold: float = DEFAULT_THRESHOLD, filters: Filters | None = None,
                 labels: dict[int, str] | None = None, exclude_other_people: str | None = None,
                 forced: dict[int, TrackInfo] | None = None) -> list[Hit]:
    """Appearances of the person the query vectors describe, best first.

    A track's distance is its nearest query vector's; tracks scoring below `threshold` are dropped.
    `labels` names the people that manual labels put on tracks; with `exclude_other_people` set to a
    name, tracks labelled as someone else are dropped and `forced` tracks (labelled as that person)
    are kept whatever their score, with score 1.
    """
    filters = filters or Filters()
    radius = distance_from_score(threshold)
    cand = index.within(np.atleast_2d(queries), radius, limit=MAX_CANDIDATES) if index.live else {}
    tracks = load_tracks(catalog, cand)
    scored: list[tuple[TrackInfo, float, float, bool]] = []
    for tid, t in tracks.items():
        other = labels.get(tid) if labels else None
        if exclude_other_people is not None and other is not None and other != exclude_other_people:
            continue
        d = float(cand[tid])
        scored.append((t, d, float(score_from_distance(d)), False))
    for tid, t in (forced or {}).items():
        scored = [x for x in scored if x[0].id != tid]
        d = float(np.min(np.linalg.norm(np.atleast_2d(queries) - t.embedding[None, :], axis=1)))
        scored.append((t, d, 1.0, True))
    scored = [x for x in scored if filters.keep(x[0])]
    hits = merge_appearances(scored, labels or {})
    hits.sort(key=lambda h: (-h.score, h.video, h.start_s))
    return hits[:top]


def merge_appearances(scored: list[tuple[TrackInfo, float, float, bool]], labels: dict[int, str]) -> list[Hit]:
    """Tracks of one video that overlap or touch (gap of at most one sampling interval) become one appearance."""
    by_video: dict[int, list[tuple[TrackInfo, float, float, bool]]] = {}
    for item in scored:
        by_video.setdefault(item[0].video_id, []).append(item)
    hits: list[Hit] = []
    for items in by_video.values():
        items.sort(key=lambda x: (x[0].start_s, x[0].end_s))
        group: list[tuple[TrackInfo, float, float, bool]] = []
        end = -math.inf
        for item in items:
            t = item[0]
            if group and t.start_s > end + t.interval_s * 1.01:
                hits.append(_merge(group, labels))
                group, end = [], -math.inf
            group.append(item)
            end = max(end, t.end_s)
        if group:
            hits.append(_merge(group, labels))
    return hits


def _merge(group: list[tuple[TrackInfo, float, float, bool]], labels: dict[int, str]) -> Hit:
    best_t, best_d, best_s, _ = max(group, key=lambda x: (x[2], -x[1]))
    return Hit(video=best_t.path, start_s=round(min(x[0].start_s for x in group), 3),
               end_s=round(max(x[0].end_s for x in group), 3), score=round(best_s, 4), distance=round(best_d, 4),
               track_id=best_t.public_id, track_ids=[x[0].public_id for x in sorted(group, key=lambda x: x[0].id)],
               thumbnail=best_t.thumbnail, video_id=best_t.video_id, duration_s=best_t.duration_s,
               labelled=any(x[3] for x in group),
               person=next((labels[x[0].id] for x in group if x[0].id in labels), None),
               person_track_id=best_t.person_track_id)


def find_appearances(catalog: Catalog, out_dir: str | None, *, query: np.ndarray | None = None,
                     person: str | None = None, top: int = 20, threshold: float = DEFAULT_THRESHOLD,
                     filters: Filters | None = None) -> list[Hit]:
    """`vidx search`: the appearances of the face `query` describes, or of the named `person`, best first.

    Manual labels name the people on the tracks found. A search by name queries with the person's exemplars
    and labelled tracks, leaves out tracks labelled as someone else and always returns the labelled ones.
    """
    from search.people import get_person, label_names, person_queries, resolve_labels  # search.people builds on this

    if (query is None) == (person is None):
        raise InputError("give exactly one of a query photo or a person's name")
    resolved = resolve_labels(catalog)
    names = label_names(catalog, resolved)
    if query is not None:
        index = open_search_index(catalog, out_dir)
        return search_index(catalog, index, query, top=top, threshold=threshold, filters=filters, labels=names)
    known = get_person(catalog, person or "")
    queries = person_queries(catalog, known)
    index = open_search_index(catalog, out_dir)
    forced = load_tracks(catalog, [tid for tid, (pid, _) in resolved.items() if pid == known.id])
    return search_index(catalog, index, queries, top=top, threshold=threshold, filters=filters, labels=names,
                        exclude_other_people=known.name, forced=forced)


def search_tracks(catalog: Catalog, query: np.ndarray, *, top: int = 20, threshold: float = DEFAULT_THRESHOLD,
                  video_glob: str | None = None, out_dir: str | None = None) -> list[Hit]:
    """Photo search over the index of `catalog` (refreshing its vector index first)."""
    index = open_search_index(catalog, out_dir)
    return search_index(catalog, index, query, top=top, threshold=threshold, filters=Filters(video_glob))
