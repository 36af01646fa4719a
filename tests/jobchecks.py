"""Checks on a job's rows in the SQL index, shared by the job tests (in-process, worker processes, Ray)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from catalog.db import Catalog
from schemas.sql import Task, Track


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
