"""How many people, when: a video's person tracks from the index, and the count of people over time."""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from catalog.db import Catalog
from schemas.errors import InputError
from schemas.ids import face_track_id, person_track_id
from schemas.sql import PersonTrack, Track, Video


@dataclass
class PersonSpan:
    """One person track: a body seen continuously from start_s to end_s."""

    person_track_id: str
    start_s: float
    end_s: float
    n_detections: int
    thumbnail: str | None
    face_track_ids: list[str] = field(default_factory=list)


@dataclass
class Segment:
    """A stretch of the video during which the same number of people were being tracked."""

    start_s: float
    end_s: float
    people: int


@dataclass
class Timeline:
    video: str
    video_id: int
    duration_s: float | None
    person_tracks: list[PersonSpan]
    segments: list[Segment]

    @property
    def max_people(self) -> int:
        return max((s.people for s in self.segments), default=0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "max_people": self.max_people}


def find_video(catalog: Catalog, name: str) -> Video:
    """The indexed video a user means: its id, its path as indexed, its absolute path, or a glob or file name
    that matches exactly one indexed video."""
    with catalog.session() as s:
        if name.isdigit() and (v := s.get(Video, int(name))) is not None:
            return v
        for candidate in (name, str(Path(name).expanduser().resolve())):
            v = s.scalar(select(Video).where(Video.path == candidate))
            if v is not None:
                return v
        paths = list(s.execute(select(Video.id, Video.path)).all())
        matches = [vid for vid, p in paths if fnmatch.fnmatchcase(p, name) or fnmatch.fnmatchcase(Path(p).name, name)]
        if len(matches) == 1:
            v = s.get(Video, matches[0])
            if v is not None:
                return v
    if not matches:
        raise InputError(f"no indexed video matches {name!r}",
                         hint="give a path, file name or id from `vidx job status`")
    raise InputError(f"{len(matches)} indexed videos match {name!r}", hint="give the full path or the video's id")


def person_timeline(catalog: Catalog, video_name: str) -> Timeline:
    """The person tracks of a video's live results and how many people were tracked at each moment."""
    return video_timeline(catalog, find_video(catalog, video_name).id)


def video_timeline(catalog: Catalog, video_id: int) -> Timeline:
    """person_timeline of the video with this id."""
    with catalog.session() as s:
        video = s.get(Video, video_id)
        if video is None:
            raise InputError(f"no indexed video with id {video_id}")
        rows = s.scalars(select(PersonTrack).where(PersonTrack.video_id == video.id,
                                                   PersonTrack.run_id == video.run_id)
                         .order_by(PersonTrack.start_s, PersonTrack.track_index)).all()
        faces = s.execute(select(Track.track_index, Track.person_track_index)
                          .where(Track.video_id == video.id, Track.run_id == video.run_id,
                                 Track.person_track_index.is_not(None))
                          .order_by(Track.track_index)).all()
        spans = [PersonSpan(person_track_id(video.id, r.track_index), r.start_s, r.end_s, r.n_detections,
                            r.thumbnail) for r in rows]
    by_index = {span.person_track_id: span for span in spans}
    for face_index, person_index in faces:
        span = by_index.get(person_track_id(video.id, person_index)) if person_index is not None else None
        if span is not None:
            span.face_track_ids.append(face_track_id(video.id, face_index))
    return Timeline(video.path, video.id, video.duration_s, spans, count_segments(spans))


def count_segments(spans: list[PersonSpan]) -> list[Segment]:
    """Stretches of constant head count, from the tracks' start and end times (a track counts from its first
    sighting to its last, both included); stretches with nobody are left out."""
    events = sorted({t for s in spans for t in (s.start_s, s.end_s)})
    out: list[Segment] = []
    for a, b in itertools.pairwise(events):
        n = sum(1 for s in spans if s.start_s <= a and s.end_s >= b)
        if n == 0:
            continue
        if out and out[-1].people == n and out[-1].end_s == a:
            out[-1].end_s = b
        else:
            out.append(Segment(a, b, n))
    return out


@dataclass
class VideoSummary:
    """An indexed video as a list shows it: what it is, whether it is indexed, how many tracks its live run has."""

    video_id: int
    video: str
    status: str
    error: str | None
    duration_s: float | None
    codec: str | None
    width: int | None
    height: int | None
    face_tracks: int
    person_tracks: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_videos(catalog: Catalog) -> list[VideoSummary]:
    """Every video of the index by path, with the number of face and person tracks of its live results."""
    from sqlalchemy import func

    with catalog.session() as s:
        faces = dict(s.execute(select(Track.video_id, func.count()).join(Video, Video.id == Track.video_id)
                               .where(Track.run_id == Video.run_id).group_by(Track.video_id)).all())
        bodies = dict(s.execute(select(PersonTrack.video_id, func.count())
                                .join(Video, Video.id == PersonTrack.video_id)
                                .where(PersonTrack.run_id == Video.run_id).group_by(PersonTrack.video_id)).all())
        videos = s.scalars(select(Video).order_by(Video.path)).all()
        return [VideoSummary(v.id, v.path, v.status, v.error, v.duration_s, v.codec, v.width, v.height,
                             int(faces.get(v.id, 0)), int(bodies.get(v.id, 0))) for v in videos]
