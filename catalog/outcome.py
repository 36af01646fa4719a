"""What a worker hands back for one video: plain values, cheap to send through Ray.

Kept apart from the SQL catalog so that a worker process (a Ray actor) imports no SQL stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackRow:
    """A track as the worker hands it to the driver (plain values, cheap to send through Ray)."""

    track_index: int
    start_s: float
    end_s: float
    n_faces: int
    embedding: bytes
    quality: float
    best_pts_s: float
    thumbnail: str | None
    person_track_index: int | None = None


@dataclass
class PersonTrackRow:
    """A person track as the worker hands it to the driver."""

    track_index: int
    start_s: float
    end_s: float
    n_detections: int
    best_pts_s: float
    thumbnail: str | None


@dataclass
class VideoOutcome:
    """What processing one video produced, success or failure."""

    video_id: int
    status: str
    """done | failed | skipped"""
    error: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    frames_decoded: int = 0
    frames_analysed: int = 0
    faces: int = 0
    """Faces detected (rows of the faces part)."""
    persons: int = 0
    """Persons detected (rows of the persons part)."""
    elapsed_s: float = 0.0
    tracks: list[TrackRow] = field(default_factory=list)
    person_tracks: list[PersonTrackRow] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    worker: str | None = None
