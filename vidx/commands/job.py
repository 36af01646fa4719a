"""`vidx job submit|resume|status|list|cancel`: indexing jobs, on Ray or in-process."""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from schemas.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_STALL_TIMEOUT_S, DEFAULT_WORKERS_PER_GPU
from vidx.commands.common import (
    Context,
    FaceDetectorArgs,
    archive_argument,
    build_settings,
    db_option,
    device_option,
    engine_option,
    engine_start_option,
    face_detector_option,
    json_option,
    open_catalog,
    out_option,
    pass_ctx,
    refresh_after_job,
    sampling_options,
)
from vidx.output import emit, err, out

if TYPE_CHECKING:  # the CLI imports the job machinery only when a command runs
    from catalog.records import JobInfo
    from jobs.runner import DriverSummary

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorArgs:
    """The command-line options that say how a job's executor runs (one value for the commands that take them)."""

    address: str | None
    workers: int | None
    workers_per_gpu: int
    videos_per_worker: int | None
    max_attempts: int
    stall_timeout: float

    def to_json(self, kind: str, device: str) -> dict[str, Any]:
        """The executor as stored with a job or schedule (see jobs.executors.executor_from_options)."""
        if kind == "local":
            return {"kind": "local", "workers": self.workers, "workers_per_gpu": self.workers_per_gpu,
                    "max_attempts": self.max_attempts, "stall_timeout_s": self.stall_timeout,
                    "videos_per_worker": self.videos_per_worker}
        from jobs.ray_executor import RayOptions

        return RayOptions(address=self.address, workers=self.workers, workers_per_gpu=self.workers_per_gpu,
                          videos_per_worker=self.videos_per_worker, max_attempts=self.max_attempts,
                          stall_timeout_s=self.stall_timeout, gpu={"cpu": False, "gpu": True}.get(device)).to_json()


def executor_options(fn: Any) -> Any:
    """Where a job runs: Ray (local instance or a cluster) or in-process, and how failures are handled.
    The command receives them as one `executor_args` (ExecutorArgs)."""
    opts = [
        click.option("--address", default=None, envvar="VIDX_RAY_ADDRESS",
                     help="Ray cluster: 'auto' (running on this node) or ray://HEAD:10001 "
                          "[default: start a local Ray instance]."),
        click.option("--workers", type=click.IntRange(1, 4096), default=None,
                     help="Worker processes [default: --workers-per-gpu per GPU; without GPUs: Ray CPUs/4, "
                          "local one worker in the command's own process]."),
        click.option("--workers-per-gpu", type=click.IntRange(1, 16), default=DEFAULT_WORKERS_PER_GPU,
                     show_default=True,
                     help="Worker processes sharing one GPU (on Ray each asks for 1/N of it)."),
        click.option("--videos-per-worker", type=click.IntRange(1, 64), default=None,
                     help="Videos each worker indexes at once, sharing its models' batches "
                          "[default: 8 on a GPU, 1 on a CPU]."),
        click.option("--max-attempts", type=click.IntRange(1, 20), default=DEFAULT_MAX_ATTEMPTS, show_default=True,
                     help="Attempts per video when its worker process crashes or hangs."),
        click.option("--stall-timeout", type=click.FloatRange(1, 86400), default=DEFAULT_STALL_TIMEOUT_S,
                     show_default=True,
                     help="Seconds without a decoded batch after which a video counts as hung."),
    ]
    names = [f.name for f in fields(ExecutorArgs)]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        kwargs["executor_args"] = ExecutorArgs(**{name: kwargs.pop(name) for name in names})
        return fn(*args, **kwargs)

    for opt in reversed(opts):
        command = opt(command)
    return command


def plan_options(fn: Any) -> Any:
    fn = click.option("--reprocess-stale/--keep-stale", default=True, show_default=True,
                      help="Redo videos indexed by another pipeline/model version or with other settings that change "
                           "results (--sample-fps, --every-frame, --keyframes, --min-face, --no-persons), or keep "
                           "their results as they are.")(fn)
    fn = click.option("--retry-failed", is_flag=True,
                      help="Also retry videos that failed before (same file, same run).")(fn)
    return fn


@dataclass(frozen=True)
class Finished:
    """A job driven by this command: the driver's summary, its workers, and where the results went."""

    summary: DriverSummary
    workers: dict[str, Any]
    out: Any
    """The job's output folder or URI as the job recorded it."""
    db: str

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.to_json(), "workers": self.workers, "out": self.out, "db": self.db}


def finish(done: Finished, as_json: bool) -> None:
    from vidx.progress import JobProgress

    emit(done.to_json(), as_json, lambda _: JobProgress.render_summary(done.summary, done.out, done.db))
    if done.summary.status != "done":
        sys.exit(4)
    if done.summary.failed or done.summary.unreadable:
        sys.exit(3)


def run_foreground(ctx: Context, archive: Path | str, *, out_dir: str, db_url: str | None, settings: Any,
                   executor: dict[str, Any], reprocess_stale: bool, retry_failed: bool, as_json: bool,
                   address: str | None = None) -> Finished:
    """Plan and drive a job in this process with a progress bar; the summary (for printing)."""
    from jobs.executors import executor_from_options
    from jobs.runner import PlanOptions, run_job
    from vidx.progress import JobProgress

    catalog = open_catalog(out_dir, db_url, create=True)
    with JobProgress(quiet=as_json) as progress:
        result = run_job(archive, catalog=catalog, out_uri=out_dir, settings=settings,
                         executor=executor_from_options(executor, address), cache_dir=ctx.cache_dir,
                         events=progress.events(), options=PlanOptions(reprocess_stale, retry_failed),
                         executor_options=executor)
    refresh_after_job(catalog, out_dir)
    return Finished(result.summary, result.workers, out_dir, catalog.url)


@click.group()
def job() -> None:
    """Indexing jobs: submit, follow, resume, cancel."""


@job.command("submit")
@archive_argument
@out_option
@db_option
@click.option("--executor", type=click.Choice(EXECUTORS), default="ray", show_default=True,
              help="ray: worker actors on a Ray cluster (local instance by default); local: in this process.")
@executor_options
@plan_options
@click.option("--detach", is_flag=True, help="Plan the job, drive it from a background process, return at once.")
@device_option
@engine_option
@engine_start_option()
@sampling_options
@face_detector_option
@json_option
@pass_ctx
def submit_cmd(ctx: Context, archive: Path | str, out_dir: str, db_url: str | None, executor: str,
               executor_args: ExecutorArgs, reprocess_stale: bool, retry_failed: bool, detach: bool, device: str,
               engine: str, engine_start: str, sample_fps: float, every_frame: bool, keyframes: bool, min_face: int,
               no_persons: bool, persons_every: float, face_detector: FaceDetectorArgs, as_json: bool) -> None:
    """Index ARCHIVE as a job: only what is missing (new, changed, or stale with --reprocess-stale)."""
    settings = build_settings(device, engine, sample_fps, every_frame, keyframes, min_face, no_persons, face_detector,
                              persons_every, engine_start)
    ex = executor_args.to_json(executor, device)
    if detach:
        from jobs.detached import start_detached
        from jobs.runner import PlanOptions

        started = start_detached(archive, catalog=open_catalog(out_dir, db_url, create=True), out_uri=out_dir,
                                 settings=settings, executor_options=ex, cache_dir=ctx.cache_dir,
                                 options=PlanOptions(reprocess_stale, retry_failed))
        emit(asdict(started), as_json, lambda i: out.print(
            f"job {i['job_id']}: {i['queued']} videos queued, {i['skipped']} skipped; driver pid {i['driver_pid']}, "
            f"log {i['log']}\nfollow it with: vidx job status {i['job_id']} --db {i['db']}"))
        return
    summary = run_foreground(ctx, archive, out_dir=out_dir, db_url=db_url, settings=settings, executor=ex,
                             reprocess_stale=reprocess_stale, retry_failed=retry_failed, as_json=as_json)
    finish(summary, as_json)


@job.command("resume")
@click.argument("job_id", type=int)
@out_option
@db_option
@click.option("--address", default=None, help="Run on this Ray cluster instead of the one the job named.")
@click.option("--force", is_flag=True, help="Take the job over even though its old driver still beats.")
@click.option("--quiet", is_flag=True, hidden=True)
@json_option
@pass_ctx
def resume_cmd(ctx: Context, job_id: int, out_dir: str, db_url: str | None, address: str | None, force: bool,
               quiet: bool, as_json: bool) -> None:
    """Continue job JOB_ID after its driver stopped: unfinished videos run, finished ones stay."""
    from catalog.job_state import get_job
    from jobs.executors import executor_from_options
    from jobs.runner import resume_job
    from vidx.progress import JobProgress

    catalog = open_catalog(out_dir, db_url)
    job_row = get_job(catalog, job_id)
    executor = executor_from_options(job_row.options.get("executor", {"kind": "local"}), address)
    with JobProgress(quiet=as_json or quiet) as progress:
        result = resume_job(job_id, catalog=catalog, executor=executor, cache_dir=ctx.cache_dir,
                            events=progress.events(), force=force)
    refresh_after_job(catalog, job_row.options.get("out", out_dir))
    finish(Finished(result.summary, result.workers, job_row.options.get("out", out_dir), catalog.url), as_json)


@job.command("status")
@click.argument("job_id", type=int, required=False)
@out_option
@db_option
@click.option("--watch", is_flag=True, help="Refresh every 2 s until the job ends.")
@json_option
def status_cmd(job_id: int | None, out_dir: str, db_url: str | None, watch: bool, as_json: bool) -> None:
    """State of job JOB_ID (default: the latest): counts, rate, ETA, videos in progress."""
    from catalog.job_state import job_info, list_jobs

    catalog = open_catalog(out_dir, db_url)
    if job_id is None:
        jobs = list_jobs(catalog, limit=1)
        if not jobs:
            raise click.ClickException("no jobs in this index")
        job_id = jobs[0].job_id
    while True:
        info = job_info(catalog, job_id)
        emit(info.to_json(), as_json, functools.partial(render_status, info))
        if not watch or info.status not in ("running", "cancelling", "queued") or info.driver_gone:
            return
        time.sleep(2.0)


def render_status(i: JobInfo, _json: object = None) -> None:
    eta = f", ETA {i.eta_s:.0f} s" if i.eta_s is not None else ""
    rate = f", {i.frames_per_s:,.0f} frames/s" if i.frames_per_s else ""
    alive = (" (driver gone: vidx job resume)" if i.driver_gone else " (driver alive)" if i.alive
             else "") if i.status in ("running", "cancelling", "queued") else ""
    out.print(escape(f"job {i.job_id} [{i.status}{alive}] {i.archive}"), highlight=False)
    if i.driver_gone and i.driver_error:
        out.print(escape(f"  its driver stopped; the end of {i.driver_log}:"), highlight=False)
        for line in i.driver_error:
            out.print(escape(f"    {line}"), style="red", highlight=False)
    out.print(f"  {i.done} done, {i.skipped} skipped, {i.failed} failed, {i.running} running, "
              f"{i.queued} queued of {i.videos}; {i.frames_decoded:,} frames in {i.wall_s:.1f} s"
              f"{rate}{eta}")
    for t in i.in_progress:
        out.print(f"  running {t['path']} on {t['worker']} (attempt {t['attempts']})", highlight=False)
    for f in i.failures:
        out.print(f"  [red]failed[/red] {f['path']}: {f['error']}", highlight=False)


@job.command("list")
@out_option
@db_option
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@json_option
def list_cmd(out_dir: str, db_url: str | None, limit: int, as_json: bool) -> None:
    """Recent jobs, newest first."""
    from catalog.job_state import list_jobs

    rows = list_jobs(open_catalog(out_dir, db_url), limit=limit)

    def render(_: object) -> None:
        table = Table("job", "status", "done", "skipped", "failed", "queued", "created", "archive")
        for r in rows:
            n = r.counts
            table.add_row(str(r.job_id), r.status, str(n.get("done", 0)), str(n.get("skipped", 0)),
                          str(n.get("failed", 0)), str(n.get("queued", 0) + n.get("running", 0)),
                          r.created_at or "", r.archive)
        out.print(table)

    emit([r.to_json() for r in rows], as_json, render)


@job.command("cancel")
@click.argument("job_id", type=int)
@out_option
@db_option
@json_option
def cancel_cmd(job_id: int, out_dir: str, db_url: str | None, as_json: bool) -> None:
    """Stop job JOB_ID: its driver finishes the videos' bookkeeping and stops; `vidx job resume` continues it."""
    from catalog.job_state import cancel

    status = cancel(open_catalog(out_dir, db_url), job_id)
    emit({"job_id": job_id, "status": status}, as_json,
         lambda d: err.print(f"job {d['job_id']}: {d['status']}"))
