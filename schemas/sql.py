"""SQLAlchemy 2.x models of the SQL index: what was indexed, by which run, and the face tracks found.

Portable across SQLite (the embedded default) and PostgreSQL. Embeddings are stored as raw
little-endian float32 bytes, so no extension is needed; pgvector is used only where the server has it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from schemas.ids import face_track_id, person_track_id

SQL_SCHEMA_VERSION = 2


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def db_clock(s: Session) -> dt.datetime:
    """Now, by the clock a job's heartbeats and times are written and judged by: the PostgreSQL server's (one
    clock for all hosts; its transaction's start), or this host's for SQLite (a database file on this host)."""
    if s.get_bind().dialect.name == "postgresql":
        now = aware(s.scalar(select(func.now())))
        if now is not None:
            return now
    return utcnow()


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back without a zone; they were written in UTC."""
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


class Video(Base):
    """A video file of an archive, as last seen and last indexed."""

    __tablename__ = "videos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    duration_s: Mapped[float | None] = mapped_column(Float)
    codec: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="new")
    """new | indexed | failed | skipped"""
    error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    """The run whose results are live for this video."""
    frames_decoded: Mapped[int | None] = mapped_column(BigInteger)
    frames_analysed: Mapped[int | None] = mapped_column(BigInteger)
    indexed_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Run(Base):
    """One combination of pipeline version, model versions and result parameters."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)
    pipeline_version: Mapped[str] = mapped_column(String(16))
    models: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    """queued | running | done | failed | cancelled"""
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    options: Mapped[dict[str, Any]]
    summary: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    driver: Mapped[str | None] = mapped_column(String(128))


class Task(Base):
    """One video of one job."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "video_id"), Index("ix_tasks_job_status", "job_id", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id"))
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    """queued | running | done | failed | skipped"""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    frames: Mapped[int | None] = mapped_column(BigInteger)
    duration_s: Mapped[float | None] = mapped_column(Float)
    claimed_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    elapsed_s: Mapped[float | None] = mapped_column(Float)


class _TrackSpan:
    """What face and person tracks share: one video, one run, a number within them, first and last sighting,
    the best sighting's time and thumbnail."""

    __table_args__ = (UniqueConstraint("video_id", "run_id", "track_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    track_index: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    best_pts_s: Mapped[float] = mapped_column(Float)
    thumbnail: Mapped[str | None] = mapped_column(Text)


class Track(_TrackSpan, Base):
    """A face track: one person seen continuously in one video, by one run."""

    __tablename__ = "tracks"
    n_faces: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    quality: Mapped[float] = mapped_column(Float)
    cluster_id: Mapped[int | None] = mapped_column(Integer, index=True)
    person_track_index: Mapped[int | None] = mapped_column(Integer)
    """The person track (same video and run) most of this track's faces were inside."""

    @property
    def public_id(self) -> str:
        return face_track_id(self.video_id, self.track_index)


class PersonTrack(_TrackSpan, Base):
    """A person track: one body seen continuously in one video, by one run."""

    __tablename__ = "person_tracks"
    n_detections: Mapped[int] = mapped_column(Integer)

    @property
    def public_id(self) -> str:
        return person_track_id(self.video_id, self.track_index)


class Person(Base):
    """A named person: exemplar photos and manual labels point here."""

    __tablename__ = "persons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Exemplar(Base):
    __tablename__ = "exemplars"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Label(Base):
    """A manual label: a person seen in a video between two times. A fixed fact, never re-derived.

    Labels point at the video and a time span, not at a track row, so they survive reprocessing
    (new runs make new track rows) and re-clustering.
    """

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), index=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id"), index=True)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    __tablename__ = "schedules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    archive: Mapped[str] = mapped_column(Text)
    cron: Mapped[str] = mapped_column(String(100))
    options: Mapped[dict[str, Any]]
    enabled: Mapped[bool] = mapped_column(default=True)
    next_run_at: Mapped[dt.datetime]
    last_run_at: Mapped[dt.datetime | None]
    last_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
