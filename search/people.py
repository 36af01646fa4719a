"""Named people, manual labels and clustering of unknown faces.

- A person has exemplars: descriptors of faces from photos (`vidx person add NAME IMG...`). A search
  by name queries with all of them (and with the tracks labelled as that person): a track's distance is
  its nearest exemplar's, so several photos cover more poses and lighting than one.
- A label is a manual fact: "this person is in this video from start_s to end_s, with this face".
  It points at the video, a time span and the track's descriptor, never at a track row, so it
  survives reprocessing (new runs make new track rows) and re-clustering. A label applies to the
  live track of its video that overlaps its span and whose descriptor is within LABEL_MATCH_L2.
- Clustering groups live tracks by identity with DBSCAN on the descriptors (neighbours by FAISS range
  search, exact). Labels are constraints: a cluster never holds tracks labelled as two different people
  (such a cluster is split around its labelled members), and clustering never writes labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update

from catalog.db import Catalog
from engines.loader import Engines
from schemas.embeddings import embedding_from_bytes, embedding_to_bytes
from schemas.errors import InputError
from schemas.sql import Exemplar, Label, Person, Track, Video
from search.query import TrackInfo, detect_query_face, live_track_rows, load_tracks

LABEL_MATCH_L2 = 0.6
"""A label applies to a track of its video and time span whose descriptor is this close (dlib's boundary)."""
DEFAULT_EPS = 0.5
DEFAULT_MIN_SAMPLES = 2
EXACT_NEIGHBOURS_LIMIT = 200_000
"""Up to this many tracks, DBSCAN's neighbourhoods are exact; beyond, they come from an IVF index."""


class PersonError(InputError):
    """A person, track or cluster named on the command line does not exist or cannot take the label."""


@dataclass
class PersonSummary:
    id: int
    name: str
    exemplars: int
    labels: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def get_person(catalog: Catalog, name: str, *, create: bool = False) -> Person:
    name = name.strip()
    if not name:
        raise PersonError("a person's name cannot be empty")
    with catalog.session() as s:
        person = s.scalar(select(Person).where(Person.name == name))
        if person is None:
            if not create:
                known = ", ".join(s.scalars(select(Person.name).order_by(Person.name).limit(20))) or "none yet"
                raise PersonError(f"no person named {name!r}", hint=f"known people: {known}; add one with "
                                  "`vidx person add NAME PHOTO...`")
            person = Person(name=name)
            s.add(person)
            s.flush()
        return person


def add_person(catalog: Catalog, engines: Engines, name: str, photos: Sequence[Path],
               face: int | None = None) -> tuple[Person, list[dict[str, Any]]]:
    """Create (or extend) a person with one exemplar per photo; every photo must show a face."""
    faces = [detect_query_face(engines, Path(p), face) for p in photos]  # fails before writing anything
    person = get_person(catalog, name, create=True)
    with catalog.session() as s:
        for q in faces:
            s.add(Exemplar(person_id=person.id, embedding=embedding_to_bytes(q.embedding), source=str(q.photo)))
    return person, [{"photo": str(q.photo), "faces_in_photo": q.faces_in_photo, "box": q.box} for q in faces]


def list_people(catalog: Catalog) -> list[PersonSummary]:
    with catalog.session() as s:
        ex = dict(s.execute(select(Exemplar.person_id, func.count()).group_by(Exemplar.person_id)).all())
        lab = dict(s.execute(select(Label.person_id, func.count()).group_by(Label.person_id)).all())
        people = s.execute(select(Person.id, Person.name).order_by(Person.name)).all()
    return [PersonSummary(pid, name, int(ex.get(pid, 0)), int(lab.get(pid, 0))) for pid, name in people]


def person_queries(catalog: Catalog, person: Person) -> np.ndarray:
    """The person's query vectors: exemplars from photos, then the descriptors of labelled tracks."""
    with catalog.session() as s:
        blobs = list(s.scalars(select(Exemplar.embedding).where(Exemplar.person_id == person.id)))
        blobs += list(s.scalars(select(Label.embedding).where(Label.person_id == person.id)))
    if not blobs:
        raise PersonError(f"{person.name!r} has no photos and no labelled tracks",
                          hint="add photos with `vidx person add NAME PHOTO...`")
    return np.stack([embedding_from_bytes(b) for b in blobs])


# ------------------------------------------------------------------------------------------ labels


def _labels_of_videos(catalog: Catalog, videos: set[int] | None) -> list[tuple[int, int, int, float, float, bytes]]:
    stmt = select(Label.id, Label.person_id, Label.video_id, Label.start_s, Label.end_s, Label.embedding)
    with catalog.session() as s:
        if videos is None:
            return [tuple(r) for r in s.execute(stmt).all()]  # type: ignore[misc]
        out = []
        vids = sorted(videos)
        for i in range(0, len(vids), 900):
            out += [tuple(r) for r in s.execute(stmt.where(Label.video_id.in_(vids[i:i + 900]))).all()]
        return out  # type: ignore[return-value]


def _live_tracks_of_videos(catalog: Catalog, videos: set[int]) -> list[TrackInfo]:
    ids: list[int] = []
    vids = sorted(videos)
    with catalog.session() as s:
        for i in range(0, len(vids), 900):
            ids += list(s.scalars(select(Track.id).join(Video, Video.id == Track.video_id)
                                  .where(Track.run_id == Video.run_id, Track.video_id.in_(vids[i:i + 900]))))
    return list(load_tracks(catalog, ids).values())


def resolve_labels(catalog: Catalog, videos: set[int] | None = None) -> dict[int, tuple[int, int]]:
    """Live track id -> (person id, label id) for every label that applies to a live track.

    A label applies to the track of its video that overlaps its time span and whose descriptor is
    nearest to the label's (within LABEL_MATCH_L2); the same rule finds it again after reprocessing.
    """
    labels = _labels_of_videos(catalog, videos)
    if not labels:
        return {}
    tracks = _live_tracks_of_videos(catalog, {lab[2] for lab in labels})
    by_video: dict[int, list[TrackInfo]] = {}
    for t in tracks:
        by_video.setdefault(t.video_id, []).append(t)
    out: dict[int, tuple[int, int]] = {}
    for label_id, person_id, video_id, start, end, blob in labels:
        emb = embedding_from_bytes(blob)
        best: tuple[float, int] | None = None
        for t in by_video.get(video_id, []):
            if t.start_s > end + t.interval_s or t.end_s < start - t.interval_s:
                continue
            d = float(np.linalg.norm(t.embedding - emb))
            if d <= LABEL_MATCH_L2 and (best is None or d < best[0]):
                best = (d, t.id)
        if best is not None:
            out[best[1]] = (person_id, label_id)
    return out


def label_names(catalog: Catalog, resolved: dict[int, tuple[int, int]]) -> dict[int, str]:
    """Track id -> person name, for resolved labels."""
    with catalog.session() as s:
        names = dict(s.execute(select(Person.id, Person.name)).all())
    return {tid: names[pid] for tid, (pid, _) in resolved.items() if pid in names}


def track_rows_of(catalog: Catalog, public_ids: Sequence[str]) -> list[int]:
    """The SQL rows of face tracks named by their public ids; one that names no live track is an error."""
    rows = live_track_rows(catalog, public_ids)
    missing = [p for p in public_ids if p not in rows]
    if missing:
        raise PersonError(f"no live face track {', '.join(missing)}",
                          hint="face track ids such as 12-3 are in `vidx search` output")
    return [rows[p] for p in public_ids]


def label_tracks(catalog: Catalog, track_ids: Sequence[int], name: str) -> dict[str, list[str]]:
    """Label tracks (SQL rows) as a person (created if new); says which public track ids were labelled, were
    already, or were left alone because they are labelled as someone else."""
    tracks = load_tracks(catalog, track_ids)
    person = get_person(catalog, name, create=True)
    current = resolve_labels(catalog, {t.video_id for t in tracks.values()})
    done: dict[str, list[str]] = {"labelled": [], "already": [], "conflict": []}
    with catalog.session() as s:
        for tid, t in tracks.items():
            if tid in current:
                done["already" if current[tid][0] == person.id else "conflict"].append(t.public_id)
                continue
            s.add(Label(person_id=person.id, video_id=t.video_id, start_s=t.start_s, end_s=t.end_s,
                        embedding=embedding_to_bytes(t.embedding)))
            done["labelled"].append(t.public_id)
    if done["conflict"] and len(track_ids) == 1:
        raise PersonError(f"track {done['conflict'][0]} is labelled as someone else",
                          hint="remove that label first with `vidx person unlabel TRACK_ID`")
    return done


def unlabel_tracks(catalog: Catalog, track_ids: Sequence[int], name: str | None = None) -> int:
    """Remove the labels that apply to these tracks (SQL rows; only those of `name` if given); returns how
    many."""
    tracks = load_tracks(catalog, track_ids)
    resolved = resolve_labels(catalog, {t.video_id for t in tracks.values()})
    person_id = get_person(catalog, name).id if name else None
    doomed = [lab for tid, (pid, lab) in resolved.items() if tid in tracks and person_id in (None, pid)]
    with catalog.session() as s:
        if doomed:
            s.execute(delete(Label).where(Label.id.in_(doomed)))
    return len(doomed)


def cluster_members(catalog: Catalog, cluster_id: int) -> list[int]:
    with catalog.session() as s:
        ids = list(s.scalars(select(Track.id).join(Video, Video.id == Track.video_id)
                             .where(Track.run_id == Video.run_id, Track.cluster_id == cluster_id)))
    if not ids:
        raise PersonError(f"no cluster {cluster_id}", hint="run `vidx people cluster` and use one of its ids")
    return ids


# ------------------------------------------------------------------------------------------ clustering


def dbscan(vectors: np.ndarray, eps: float, min_samples: int, *, exact_limit: int = EXACT_NEIGHBOURS_LIMIT,
           nprobe: int = 16) -> np.ndarray:
    """DBSCAN labels (-1 = noise) with L2 neighbourhoods of radius eps.

    Neighbourhoods come from a FAISS range search: exact up to `exact_limit` points, beyond that over an
    IVF index probing `nprobe` lists (a person's tracks sit within a few lists; a neighbour missed there
    can only split a cluster, never merge two).
    """
    import faiss

    from search.vector_index import build_ivf

    n = len(vectors)
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if n <= exact_limit:
        index: Any = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
    else:
        index = build_ivf(x, np.arange(n, dtype=np.int64))
        index.nprobe = min(nprobe, int(index.nlist))
    lims, _, nbrs = index.range_search(x, float(eps) ** 2)  # squared L2; each point is its own neighbour
    counts = np.diff(lims)
    core = counts >= min_samples
    cluster = 0
    for seed in np.nonzero(core)[0]:
        if labels[seed] >= 0:
            continue
        labels[seed] = cluster
        stack = [int(seed)]
        while stack:
            p = stack.pop()
            if not core[p]:
                continue
            for q in nbrs[lims[p]:lims[p + 1]]:
                if labels[q] < 0:
                    labels[q] = cluster
                    stack.append(int(q))
        cluster += 1
    return labels


@dataclass
class Cluster:
    id: int
    size: int
    videos: int
    person: str | None
    track_ids: list[str]
    """Public ids of the cluster's face tracks."""
    thumbnail: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cluster_people(catalog: Catalog, *, eps: float = DEFAULT_EPS, min_samples: int = DEFAULT_MIN_SAMPLES,
                   vectors: tuple[np.ndarray, np.ndarray] | None = None) -> list[Cluster]:
    """Cluster the live tracks, store cluster ids on them, and describe the clusters (largest first).

    Labelled tracks are anchors: a cluster holding labels of two people is split, each member going to
    the person of its nearest labelled member. Cluster ids are kept from the previous clustering where
    most of a cluster's members had one id. `vectors` (ids, vectors) spares reading SQL when given.
    """
    if vectors is None:
        with catalog.session() as s:
            rows = s.execute(select(Track.id, Track.embedding).join(Video, Video.id == Track.video_id)
                             .where(Track.run_id == Video.run_id).order_by(Track.id)).all()
        ids = np.asarray([r.id for r in rows], np.int64)
        x = (np.stack([embedding_from_bytes(r.embedding) for r in rows]) if rows
             else np.zeros((0, 128), np.float32))
    else:
        ids, x = vectors
    labels = dbscan(x, eps, min_samples)
    resolved = resolve_labels(catalog)
    person_of = np.asarray([resolved.get(int(t), (-1, -1))[0] for t in ids], np.int64)
    labels = _split_named(labels, person_of, x)
    old = _old_cluster_ids(catalog)
    final = _stable_ids(labels, ids, old)
    with catalog.session() as s:
        s.execute(update(Track).values(cluster_id=None))
        if len(ids):
            pairs = [{"tid": int(t), "cid": int(c)} for t, c in zip(ids, final, strict=True) if c >= 0]
            from sqlalchemy import bindparam

            if pairs:
                s.connection().execute(update(Track).where(Track.id == bindparam("tid"))
                                       .values(cluster_id=bindparam("cid")), pairs)
        names = dict(s.execute(select(Person.id, Person.name)).all())
    return _describe(catalog, ids, final, person_of, names)


def _split_named(labels: np.ndarray, person_of: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Split every cluster whose labelled members belong to more than one person."""
    labels = labels.copy()
    next_id = int(labels.max()) + 1 if len(labels) else 0
    for c in np.unique(labels[labels >= 0]):
        members = np.nonzero(labels == c)[0]
        named = members[person_of[members] >= 0]
        people = np.unique(person_of[named])
        if len(people) < 2:
            continue
        d = np.linalg.norm(x[members][:, None, :] - x[named][None, :, :], axis=2)
        owner = person_of[named][np.argmin(d, axis=1)]
        owner = np.where(person_of[members] >= 0, person_of[members], owner)
        for p in people[1:]:
            labels[members[owner == p]] = next_id
            next_id += 1
    return labels


def _old_cluster_ids(catalog: Catalog) -> dict[int, int]:
    with catalog.session() as s:
        rows = s.execute(select(Track.id, Track.cluster_id).where(Track.cluster_id.is_not(None))).all()
    return {int(t): int(c) for t, c in rows if c is not None}


def _stable_ids(labels: np.ndarray, ids: np.ndarray, old: dict[int, int]) -> np.ndarray:
    """Renumber clusters, keeping each one's most common previous id when no bigger cluster took it.

    `labels[i]` is the new cluster of track `ids[i]`; `old` maps track ids (not positions) to previous ids.
    """
    final = np.full(len(labels), -1, np.int64)
    if not len(labels) or labels.max() < 0:
        return final
    clusters = sorted((np.nonzero(labels == c)[0] for c in np.unique(labels[labels >= 0])), key=len, reverse=True)
    taken: set[int] = set()
    next_id = max([*old.values(), 0]) + 1
    pending = []
    for members in clusters:
        votes = Counter(old[t] for t in (int(ids[i]) for i in members) if t in old)
        choice = next((cid for cid, _ in votes.most_common() if cid not in taken), None)
        if choice is None:
            pending.append(members)
            continue
        taken.add(choice)
        final[members] = choice
    for members in pending:
        while next_id in taken:
            next_id += 1
        taken.add(next_id)
        final[members] = next_id
    return final


def _describe(catalog: Catalog, ids: np.ndarray, final: np.ndarray, person_of: np.ndarray,
              names: dict[int, str]) -> list[Cluster]:
    out = []
    members_of: dict[int, list[int]] = {}
    for i, c in enumerate(final):
        if c >= 0:
            members_of.setdefault(int(c), []).append(i)
    info = load_tracks(catalog, [int(ids[i]) for m in members_of.values() for i in m]) if members_of else {}
    for cid, members in members_of.items():
        tids = [int(ids[i]) for i in members]
        people = {int(person_of[i]) for i in members if person_of[i] >= 0}
        tracks = [info[t] for t in tids if t in info]
        out.append(Cluster(cid, len(members), len({t.video_id for t in tracks}),
                           names.get(next(iter(people))) if len(people) == 1 else None,
                           [t.public_id for t in tracks],
                           next((t.thumbnail for t in tracks if t.thumbnail), None)))
    out.sort(key=lambda c: (-c.size, c.id))
    return out


# ------------------------------------------------------------------------------------------ commands


def label(catalog: Catalog, name: str, *, track_id: str | None = None, cluster_id: int | None = None) -> dict[str, Any]:
    """`vidx person label`: label one face track (public id) or every track of a cluster as NAME."""
    if (track_id is None) == (cluster_id is None):
        raise PersonError("give a face track id or a cluster id to label")
    rows = cluster_members(catalog, cluster_id) if cluster_id is not None else track_rows_of(catalog, [track_id or ""])
    return {"name": name, **label_tracks(catalog, rows, name)}


def unlabel(catalog: Catalog, track_id: str, name: str | None = None) -> dict[str, Any]:
    """`vidx person unlabel`: remove the label(s) on a face track (public id), only `name`'s if given."""
    return {"track_id": track_id, "removed": unlabel_tracks(catalog, track_rows_of(catalog, [track_id]), name)}


def cluster_index(catalog: Catalog, out_dir: str | None, *, eps: float = DEFAULT_EPS,
                  min_samples: int = DEFAULT_MIN_SAMPLES) -> list[Cluster]:
    """`vidx people cluster`: cluster the live tracks, reading their descriptors from the search index."""
    from search.query import open_search_index

    vectors = open_search_index(catalog, out_dir).rows()  # faster than reading SQL rows
    return cluster_people(catalog, eps=eps, min_samples=min_samples, vectors=vectors)


def stored_clusters(catalog: Catalog) -> list[Cluster]:
    """The clusters as the last clustering left them (largest first), named by the labels that apply now."""
    with catalog.session() as s:
        rows = s.execute(select(Track.id, Track.cluster_id).join(Video, Video.id == Track.video_id)
                         .where(Track.run_id == Video.run_id, Track.cluster_id.is_not(None))
                         .order_by(Track.id)).all()
        names = dict(s.execute(select(Person.id, Person.name)).all())
    ids = np.asarray([r.id for r in rows], np.int64)
    final = np.asarray([r.cluster_id for r in rows], np.int64)
    resolved = resolve_labels(catalog)
    person_of = np.asarray([resolved.get(int(t), (-1, -1))[0] for t in ids], np.int64)
    return _describe(catalog, ids, final, person_of, names)


@dataclass
class FaceTrackView:
    """A live face track of a video as a person sees it: when, which body, which cluster, who a label says."""

    track_id: str
    start_s: float
    end_s: float
    thumbnail: str | None
    person_track_id: str | None
    cluster_id: int | None
    person: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def video_face_tracks(catalog: Catalog, video_id: int) -> list[FaceTrackView]:
    """The live face tracks of one video, in time order, with the names their labels give them."""
    tracks = _live_tracks_of_videos(catalog, {video_id})
    names = label_names(catalog, resolve_labels(catalog, {video_id}))
    tracks.sort(key=lambda t: (t.start_s, t.public_id))
    return [FaceTrackView(t.public_id, t.start_s, t.end_s, t.thumbnail, t.person_track_id, t.cluster_id,
                          names.get(t.id)) for t in tracks]
