"""Typed records the catalog hands to the layers above, each with the JSON that `--json` and the web API print."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class JobSummary:
    """A job's tasks counted by status, its frames, and the videos that failed."""

    job_id: int
    videos: int
    done: int
    skipped: int
    failed: int
    queued: int
    running: int
    frames_decoded: int
    failures: list[dict[str, str | None]]
    """{"path", "error"} of each failed video, by path."""

    def to_json(self) -> dict[str, Any]:
        # field order is the JSON key order, for subclasses too
        return asdict(self)


@dataclass(frozen=True)
class JobInfo(JobSummary):
    """A job's state for `vidx job status`: its summary, its driver, and rate and ETA from the finished tasks."""

    status: str
    archive: str
    driver: str | None
    alive: bool
    driver_gone: bool
    """A detached driver that never took its queued job over, or a running job's driver that stopped."""
    driver_log: str | None
    driver_error: list[str]
    """The end of the driver's log when it is gone."""
    options: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    wall_s: float
    videos_per_s: float | None
    frames_per_s: float | None
    worker_s: float
    eta_s: float | None
    in_progress: list[dict[str, Any]]
    """{"path", "worker", "attempts"} of each running video."""


@dataclass(frozen=True)
class JobRow:
    """A job as `vidx job list` shows it: its tasks counted by status, only the statuses it has."""

    job_id: int
    status: str
    archive: str
    created_at: str | None
    finished_at: str | None
    alive: bool
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        # the counts sit beside the other keys, as in the JSON before there was a record
        return {"job_id": self.job_id, "status": self.status, "archive": self.archive,
                "created_at": self.created_at, "finished_at": self.finished_at, "alive": self.alive,
                **self.counts}
