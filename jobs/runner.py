"""Running a job: scan, register, plan (skip what is current), process, commit, summarise.

`plan` turns an archive into a job (one task per video) in the SQL index; `drive_job` runs a planned
(or interrupted) job to the end with an Executor: LocalExecutor (one in-process worker, the default of
`vidx index`) or RayExecutor (jobs.ray_executor: one actor per GPU, the default of `vidx job submit`).
The driver is the only writer of the SQL index: workers hand back outcomes, the driver records each
finished video in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from catalog import job_state as state
from catalog.archive import Skipped, VideoFile, scan_archive
from catalog.db import Catalog
from catalog.outcome import VideoOutcome
from catalog.records import JobSummary
from engines.zoo import ModelStore, run_models
from indexer.write import OutputStore, remove_video_outputs
from jobs.worker import TaskSpec, VideoWorker
from schemas.config import DEFAULT_MAX_ATTEMPTS, PIPELINE_VERSION, IndexSettings, run_key
from schemas.sql import Run, Video

log = logging.getLogger(__name__)

NextTask = TaskSpec | state.Blocked | None

@dataclass
class TaskHooks:
    """What an executor calls back into the driver for; every SQL write happens behind these."""

    next_task: Callable[[str], NextTask]
    """Claim the next video for a worker: a TaskSpec, BLOCKED (ask again soon) or None (queue empty)."""
    on_done: Callable[[TaskSpec, VideoOutcome], None]
    """Record a finished video (done or failed) in one transaction."""
    on_retry: Callable[[TaskSpec, str], None]
    """An attempt ended without an outcome (worker died or hung); the video will be tried again."""
    should_stop: Callable[[], bool]
    """True once the job was cancelled."""
    on_progress: Callable[[TaskSpec, float], None] = lambda spec, pts_s: None
    """How far (seconds of video) the analysis of a video got; called by executors that can tell."""
    on_worker_replaced: Callable[[str], None] = lambda why: None
    """A worker process or actor ended (died, or was stopped as hung) and a fresh one took its place: which, and
    why, in words."""

    def next_attempt(self, spec: TaskSpec, why: str, max_attempts: int, worker: str | None = None) -> TaskSpec | None:
        """An attempt at a video ended without an outcome (its worker died or hung): the next attempt, once the
        driver has been told, or None when that was the last one (the video is then recorded as failed)."""
        if spec.attempts >= max_attempts:
            self.on_done(spec, VideoOutcome(spec.video_id, "failed", worker=worker,
                                            error=f"{why}; gave up after {spec.attempts} attempts"))
            return None
        self.on_retry(spec, why)
        return replace(spec, attempts=spec.attempts + 1)


class Executor(Protocol):
    """Runs TaskSpecs on workers and hands outcomes back through the hooks as they finish."""

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]: ...

    def run(self, hooks: TaskHooks) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """One in-process worker (`vidx index` on a CPU; jobs.processes runs several in worker processes on a
    GPU): videos claimed as it has room for them, several in flight through one indexer on a GPU (their
    frames share the models' batches; `in_flight`, default 8), one at a time on a CPU.

    A video that crashes the decoder takes this process down with it; worker processes and RayExecutor
    contain that.
    """

    def __init__(self, in_flight: int | None = None) -> None:
        self.worker: VideoWorker | None = None
        self.in_flight = in_flight

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]:
        self.worker = VideoWorker(settings, out_uri, cache_dir=cache_dir, in_flight=self.in_flight)
        return {"executor": "local", **self.worker.describe()}

    def run(self, hooks: TaskHooks) -> None:
        worker = self.worker
        if worker is None:
            raise RuntimeError("executor not started")
        while not hooks.should_stop():
            blocked = False

            def claims() -> Iterator[TaskSpec]:
                """Tasks claimed one at a time, as the worker has room (stops at a cancel or an empty queue)."""
                nonlocal blocked
                while not hooks.should_stop():
                    spec = hooks.next_task(worker.name)
                    if spec is None:
                        return
                    if spec == state.BLOCKED:  # let the videos in flight finish, then ask again
                        blocked = True
                        return
                    if isinstance(spec, TaskSpec):
                        yield spec

            for spec, outcome in worker.process_many(claims(), on_progress=hooks.on_progress):
                hooks.on_done(spec, outcome)
            if not blocked:
                return
            time.sleep(0.5)

    def close(self) -> None:
        self.worker = None


@dataclass
class JobEvents:
    """Callbacks for progress display; all optional."""

    on_plan: Callable[[dict[str, int]], None] = lambda counts: None
    """queued, skipped, unreadable, and how many videos of each state.PlanKind (when the job was planned here)."""
    on_video: Callable[[str, VideoOutcome], None] = lambda path, outcome: None
    on_workers: Callable[[dict[str, Any]], None] = lambda info: None
    on_retry: Callable[[str, str], None] = lambda path, reason: None
    on_start: Callable[[list[str]], None] = lambda paths: None
    """The paths of the videos the driver is about to index."""
    on_progress: Callable[[str, float], None] = lambda path, pts_s: None
    """How far into a video (seconds) the analysis got; only from the in-process executor (Ray's workers
    report whole videos)."""


@dataclass(frozen=True)
class DriverSummary(JobSummary):
    """A job's summary as its driver reports it at the end: the catalog's counts, then what this driver saw."""

    status: str
    plan: dict[str, int]
    """How many videos of each state.PlanKind the job was planned with ({} when planned elsewhere)."""
    faces: int
    persons: int
    tracks: int
    video_s: float
    """Found by this driver: a resumed job's earlier drivers reported theirs."""
    unreadable: list[dict[str, str]]
    """{"path", "error"} of each video the plan skipped as unreadable."""
    workers_replaced: list[str]
    """Each worker process or actor that ended while this driver ran (a crash, a hang, out of memory) and was
    replaced, with why: the videos it had in flight were tried again."""
    seconds: dict[str, float | None]
    """This driver's clock (after the archive's scan and plan): `to_first_video` from its start to its first video
    claimed (the workers' start and models included), `working` from then to its last video finished, `in_all` its
    whole run; None where it claimed or finished none."""


@dataclass
class JobResult:
    job_id: int
    summary: DriverSummary
    workers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanOptions:
    """What a submit decides beyond the indexing settings."""

    reprocess_stale: bool = True
    """Redo videos indexed by another run (pipeline or model version, settings that change results)."""
    retry_failed: bool = False


def this_driver() -> str:
    return state.driver_id()


def compute_run(catalog: Catalog, settings: IndexSettings, cache_dir: Path | None) -> Run:
    versions = ModelStore(cache_dir).versions(run_models(settings.detection.face_detector))
    key = run_key(PIPELINE_VERSION, versions, settings.result_params())
    return catalog.ensure_run(key, PIPELINE_VERSION, versions, settings.result_params())


def register(catalog: Catalog, files: list[VideoFile]) -> list[Video]:
    """Upsert the video rows; when another submit inserted the same new videos first, take theirs."""
    for attempt in range(3):
        try:
            return catalog.register(files)
        except IntegrityError:
            if attempt == 2:
                raise
            log.info("another job registered the same videos at the same time; registering again")
    raise AssertionError("unreachable")


def plan(archive: Path | str, *, catalog: Catalog, out_uri: str, settings: IndexSettings,
         cache_dir: Path | None = None, options: PlanOptions | None = None,
         executor_options: dict[str, Any] | None = None, status: str = "running") -> tuple[int, int, int, Skipped]:
    """Scan an archive and record a job for it: (job id, queued, skipped, unreadable entries)."""
    options = options or PlanOptions()
    OutputStore(out_uri).check()
    files, unreadable = scan_archive(archive)
    videos = register(catalog, files)
    run = compute_run(catalog, settings, cache_dir)
    job_options = {"settings": settings.to_json(), "out": out_uri, "reprocess_stale": options.reprocess_stale,
                   "retry_failed": options.retry_failed, "executor": executor_options or {"kind": "local"},
                   "unreadable": [[str(p), why] for p, why in unreadable]}
    job_id, queued, skipped = state.plan_job(
        catalog, str(archive), run, job_options, videos, driver=this_driver() if status == "running" else None,
        reprocess_stale=options.reprocess_stale, retry_failed=options.retry_failed, status=status)
    for path, why in unreadable:
        log.warning("%s: skipped: %s", path, why)
    return job_id, queued, skipped, unreadable


class _Heartbeat(threading.Thread):
    """Beats for the driver every few seconds and notices a cancel request, or that another process took
    the job over (then this driver stops claiming and leaves the job's state to the new one)."""

    def __init__(self, catalog: Catalog, job_id: int, driver: str | None = None):
        super().__init__(name=f"vidx-heartbeat-{job_id}", daemon=True)
        self.catalog, self.job_id, self.driver = catalog, job_id, driver
        self.cancelled = threading.Event()
        self.taken_over = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(state.HEARTBEAT_S):
            try:
                status = state.heartbeat(self.catalog, self.job_id, self.driver)
            except Exception as exc:  # a missed beat is not fatal; the next one may get through
                log.warning("heartbeat of job %d failed: %s", self.job_id, exc)
                continue
            if status == state.TAKEN_OVER:
                log.warning("job %d: another process is its driver now; this one stops", self.job_id)
                self.taken_over.set()
            if status in ("cancelling", "cancelled", state.TAKEN_OVER):
                self.cancelled.set()


def drive_job(job_id: int, *, catalog: Catalog, executor: Executor, cache_dir: Path | None = None,
              events: JobEvents | None = None) -> JobResult:
    """Run the queued tasks of a job (this process must already be its driver) and finish it."""
    events = events or JobEvents()
    job = state.get_job(catalog, job_id)
    with catalog.session() as s:
        run = s.get(Run, job.run_id)
    if run is None:
        raise state.JobStateError(f"job {job_id} has no run")
    settings = IndexSettings.from_json(job.options["settings"])
    out_uri = job.options["out"]
    max_attempts = int(job.options.get("executor", {}).get("max_attempts", DEFAULT_MAX_ATTEMPTS))
    store = OutputStore(out_uri)
    store.check()  # a missing bucket or denied access is one clear error, not a failure per video
    driver = this_driver()  # plan_job or take_over made this process the driver
    beat = _Heartbeat(catalog, job_id, driver)

    def next_task(worker: str) -> NextTask:
        task = state.claim_next(catalog, job_id, worker, max_attempts=max_attempts, driver=driver)
        if task is None or task == state.BLOCKED:
            return task
        clock.setdefault("first_claim", time.monotonic())
        return TaskSpec(video_id=task.video_id, path=task.path, fingerprint=task.fingerprint,
                        run_key=run.key, task_id=task.id, attempts=task.attempts, size=task.size)

    found = {"faces": 0, "persons": 0, "tracks": 0, "video_s": 0.0}
    started = time.monotonic()
    clock: dict[str, float] = {}
    """When this driver's first video was claimed and its last one finished (time.monotonic())."""

    def on_done(spec: TaskSpec, outcome: VideoOutcome) -> None:
        superseded = catalog.record(outcome, run, spec.task_id)
        clock["last_done"] = time.monotonic()
        if outcome.status == "done":
            found["faces"] += outcome.faces
            found["persons"] += outcome.persons
            found["tracks"] += len(outcome.tracks)
            found["video_s"] += outcome.duration_s or 0.0
        for key in superseded.run_keys:
            remove_video_outputs(store, spec.video_id, key, [])
        for thumb in superseded.thumbnails:
            store.delete(thumb)
        events.on_video(spec.path, outcome)

    def on_retry(spec: TaskSpec, reason: str) -> None:
        if spec.task_id is not None:
            state.note_retry(catalog, spec.task_id, reason)
        events.on_retry(spec.path, reason)

    replaced: list[str] = []
    hooks = TaskHooks(next_task, on_done, on_retry, beat.cancelled.is_set,
                      on_progress=lambda spec, pts_s: events.on_progress(spec.path, pts_s),
                      on_worker_replaced=replaced.append)
    workers: dict[str, Any] = {}
    status = "failed"
    beat.start()
    try:
        queued = catalog.job_summary(job_id).queued
        if queued:
            events.on_start(state.queued_paths(catalog, job_id))
            workers = executor.start(settings, out_uri, cache_dir)
            events.on_workers(workers)
            executor.run(hooks)
        status = state.TAKEN_OVER if beat.taken_over.is_set() else "cancelled" if beat.cancelled.is_set() else "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        beat.done.set()
        executor.close()
        if beat.taken_over.is_set():  # the job's queue and state are the new driver's
            summary = catalog.job_summary(job_id)
        else:
            if status != "done":  # whatever was running goes back to the queue: `vidx job resume` picks it up
                state.release_running(catalog, job_id)
            summary = catalog.finish_job(job_id, status)
    return JobResult(job_id, DriverSummary(
        **vars(summary), status=status, plan=job.options.get("plan", {}),
        faces=int(found["faces"]), persons=int(found["persons"]), tracks=int(found["tracks"]),
        video_s=round(found["video_s"], 3),
        unreadable=[{"path": p, "error": why} for p, why in job.options.get("unreadable", [])],
        workers_replaced=replaced, seconds=_seconds(started, clock)), workers)


def _seconds(started: float, clock: dict[str, float]) -> dict[str, float | None]:
    """DriverSummary.seconds from the driver's clock readings."""
    first, last = clock.get("first_claim"), clock.get("last_done")
    return {"to_first_video": round(first - started, 3) if first is not None else None,
            "working": round(last - first, 3) if first is not None and last is not None else None,
            "in_all": round(time.monotonic() - started, 3)}


def run_job(archive: Path | str, *, catalog: Catalog, out_uri: str, settings: IndexSettings, executor: Executor,
            cache_dir: Path | None = None, events: JobEvents | None = None, options: PlanOptions | None = None,
            executor_options: dict[str, Any] | None = None) -> JobResult:
    """Plan a job for an archive and drive it to the end in this process."""
    events = events or JobEvents()
    if executor_options is None:  # what `vidx job resume` needs to run it the same way
        to_json = getattr(getattr(executor, "options", None), "to_json", None)
        executor_options = to_json() if callable(to_json) else {"kind": "local"}
    job_id, queued, skipped, unreadable = plan(archive, catalog=catalog, out_uri=out_uri, settings=settings,
                                               cache_dir=cache_dir, options=options,
                                               executor_options=executor_options)
    events.on_plan({"queued": queued, "skipped": skipped, "unreadable": len(unreadable),
                    **state.get_job(catalog, job_id).options.get("plan", {})})
    return drive_job(job_id, catalog=catalog, executor=executor, cache_dir=cache_dir, events=events)


def resume_job(job_id: int, *, catalog: Catalog, executor: Executor, cache_dir: Path | None = None,
               events: JobEvents | None = None, force: bool = False) -> JobResult:
    """Continue an interrupted (or queued, detached) job: its unfinished tasks run, finished ones stay."""
    events = events or JobEvents()
    state.take_over(catalog, job_id, this_driver(), force=force)
    summary = catalog.job_summary(job_id)
    events.on_plan({"queued": summary.queued, "skipped": summary.skipped, "unreadable": 0,
                    "finished": summary.done + summary.failed})
    return drive_job(job_id, catalog=catalog, executor=executor, cache_dir=cache_dir, events=events)
