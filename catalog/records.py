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
