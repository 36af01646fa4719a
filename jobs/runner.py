"""Running a job: scan, register, plan (skip what is current), process, commit, summarise.

`vidx index` runs the job in the foreground with in-process workers; `vidx job submit` runs the
same loop with Ray actors as workers (jobs.ray_executor).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engines.zoo import ModelStore
from indexer.write import OutputStore, remove_video_outputs
from jobs.archive import scan_archive
from jobs.catalog import Catalog, VideoOutcome
from jobs.worker import TaskSpec, VideoWorker
from schemas.config import PIPELINE_VERSION, IndexSettings, run_key
from schemas.sql import Run

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs TaskSpecs on workers and yields outcomes as they finish."""

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]: ...

    def run(self, next_task: Callable[[str], TaskSpec | None], on_done: Callable[[TaskSpec, VideoOutcome], None]) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """One in-process worker."""

    def __init__(self) -> None:
        self.worker: VideoWorker | None = None

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]:
        self.worker = VideoWorker(settings, out_uri, cache_dir=cache_dir)
        return self.worker.describe()

    def run(self, next_task: Callable[[str], TaskSpec | None], on_done: Callable[[TaskSpec, VideoOutcome], None]) -> None:
        if self.worker is None:
            raise RuntimeError("executor not started")
        while (spec := next_task(self.worker.name)) is not None:
            on_done(spec, self.worker.process(spec))

    def close(self) -> None:
        self.worker = None


@dataclass
class JobEvents:
    """Callbacks for progress display; all optional."""

    on_plan: Callable[[int, int, int], None] = lambda queued, skipped, bad: None
    on_video: Callable[[str, VideoOutcome], None] = lambda path, outcome: None
    on_workers: Callable[[dict[str, Any]], None] = lambda info: None


@dataclass
class JobResult:
    job_id: int
    summary: dict[str, Any]
    workers: dict[str, Any] = field(default_factory=dict)


def compute_run(catalog: Catalog, settings: IndexSettings, cache_dir: Path | None) -> Run:
    versions = ModelStore(cache_dir).versions()
    key = run_key(PIPELINE_VERSION, versions, settings.result_params())
    return catalog.ensure_run(key, PIPELINE_VERSION, versions, settings.result_params())


def run_job(archive: Path, *, catalog: Catalog, out_uri: str, settings: IndexSettings, executor: Executor,
            cache_dir: Path | None = None, events: JobEvents | None = None) -> JobResult:
    events = events or JobEvents()
    files, unreadable = scan_archive(archive)
    videos = catalog.register(files)
    run = compute_run(catalog, settings, cache_dir)
    driver = f"{socket.gethostname()}:{os.getpid()}"
    job_id, queued, skipped = catalog.create_job(str(archive), run, {"settings": settings.to_json()}, videos,
                                                 driver=driver)
    for path, why in unreadable:
        log.warning("%s: skipped: %s", path, why)
    events.on_plan(queued, skipped, len(unreadable))
    store = OutputStore(out_uri)

    def next_task(worker: str) -> TaskSpec | None:
        task = catalog.claim_next(job_id, worker)
        if task is None:
            return None
        return TaskSpec(video_id=task.video_id, path=task.path, fingerprint=task.fingerprint, run_key=run.key,
                        task_id=task.id)

    def on_done(spec: TaskSpec, outcome: VideoOutcome) -> None:
        superseded = catalog.record(outcome, run, spec.task_id)
        for key in superseded.run_keys:
            remove_video_outputs(store, spec.video_id, key, [])
        for thumb in superseded.thumbnails:
            store.delete(thumb)
        events.on_video(spec.path, outcome)

    workers: dict[str, Any] = {}
    status = "failed"
    try:
        if queued:
            workers = executor.start(settings, out_uri, cache_dir)
            events.on_workers(workers)
            executor.run(next_task, on_done)
        status = "done"
    finally:
        executor.close()
        summary = catalog.finish_job(job_id, status)
    summary["unreadable"] = [{"path": str(p), "error": why} for p, why in unreadable]
    return JobResult(job_id, summary, workers)
