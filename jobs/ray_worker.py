"""The Ray actor body, in a module of its own: a worker process imports this, the video pipeline and
the engines, and nothing of the driver's side (no SQL stack, no job state), so it starts sooner.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from catalog.outcome import VideoOutcome
from indexer.crash_reports import report_crashes
from jobs.worker import TaskSpec, VideoWorker
from schemas.config import IndexSettings


class RayWorker:
    """The actor body: a VideoWorker in its own process (ray.remote applied in RayExecutor)."""

    def __init__(self, settings_json: str, out_uri: str, cache_dir: str | None, label: str, in_flight: int,
                 faults: str | None):
        report_crashes(stacks_on_usr1=False)  # a crash prints every thread's stack to the actor's log
        name = f"{label}@{socket.gethostname()}:{os.getpid()}"
        self.worker = VideoWorker(IndexSettings.from_json(settings_json), out_uri,
                                  cache_dir=Path(cache_dir) if cache_dir else None, name=name, in_flight=in_flight,
                                  faults=faults or "")

    def describe(self) -> dict[str, str]:
        import ray

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        # what glibc read when this process started (indexer/host_memory.py: set by RayExecutor)
        arenas = os.environ.get("MALLOC_ARENA_MAX", "glibc's default")
        return {**self.worker.describe(), "gpus": ",".join(str(g) for g in gpus), "malloc_arena_max": arenas}

    def process(self, spec: TaskSpec) -> VideoOutcome:
        """One video; the actor's concurrent calls all feed one running batch of videos (shared steps)."""
        return self.worker.process(spec)

    def stalled_for(self) -> dict[int, float]:
        return self.worker.stalled_for()
