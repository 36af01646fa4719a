"""Checks on a job's rows in the SQL index, shared by the job, pipeline and GPU tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from catalog.db import Catalog
from schemas.embeddings import embedding_from_bytes
from schemas.sql import PersonTrack, Task, Track, Video


def tasks_of(catalog: Catalog, job_id: int) -> list[Task]:
    with catalog.session() as s:
        return list(s.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.path)))


def assert_each_video_indexed_once(catalog: Catalog, n_videos: int) -> None:
    with catalog.session() as s:
        done = Counter(s.scalars(select(Task.video_id).where(Task.status == "done")))
        dupes = s.execute(select(Track.video_id, Track.track_index, func.count()).group_by(
            Track.video_id, Track.track_index).having(func.count() > 1)).all()
    assert len(done) == n_videos and set(done.values()) == {1}
    assert dupes == []


def track_spans(catalog: Catalog) -> list[tuple[str, float, float, int]]:
    """Every face track of the index as (video file name, start s, end s, faces), in order."""
    with catalog.session() as s:
        rows = s.execute(select(Video.path, Track.start_s, Track.end_s, Track.n_faces)
                         .join(Track, Track.video_id == Video.id).order_by(Video.path, Track.start_s)).all()
    return [(Path(p).name, round(a, 3), round(b, 3), n) for p, a, b, n in rows]


def _spans(catalog: Catalog, table: type[Track] | type[PersonTrack], name: str) -> list[Any]:
    with catalog.session() as s:
        return list(s.scalars(select(table).join(Video, Video.id == table.video_id)
                              .where(Video.path.like(f"%/{name}")).order_by(table.start_s)))


def assert_same_tracks(reference: Catalog, other: Catalog, names: list[str], *, max_l2: float,
                       slack_s: float, persons: bool = True) -> None:
    """Every video of `names` has as many face tracks (and, with `persons`, person tracks) in `other` as in
    `reference`; face tracks pair one to one by descriptor (within `max_l2`: tracks that start together pair
    by who they are, not by order), person tracks in order of start; paired tracks start and end within
    `slack_s`."""
    for name in names:
        ref, got = _spans(reference, Track, name), _spans(other, Track, name)
        assert len(got) == len(ref), (name, [(t.start_s, t.end_s) for t in got])
        got_embs = np.stack([embedding_from_bytes(t.embedding) for t in got]) if got else np.zeros((0, 128))
        paired = set()
        for a in ref:
            dist = np.linalg.norm(got_embs - embedding_from_bytes(a.embedding), axis=1)
            k = int(np.argmin(dist))
            assert dist[k] < max_l2, (name, a.start_s, float(dist[k]))
            assert abs(a.start_s - got[k].start_s) <= slack_s and abs(a.end_s - got[k].end_s) <= slack_s, name
            paired.add(k)
        assert len(paired) == len(got), name
        if not persons:
            continue
        ref_p, got_p = _spans(reference, PersonTrack, name), _spans(other, PersonTrack, name)
        assert len(got_p) == len(ref_p), (name, [(t.start_s, t.end_s) for t in got_p])
        for a, b in zip(ref_p, got_p, strict=True):
            assert abs(a.start_s - b.start_s) <= slack_s and abs(a.end_s - b.end_s) <= slack_s, (name, a.start_s)
