"""`vidx schedule add|list|remove|run-due` and `vidx scheduler`: nightly (or any cron) reprocessing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

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
    resolved_archive,
    sampling_options,
)
from vidx.commands.job import EXECUTORS, ExecutorArgs, executor_options, plan_options
from vidx.output import emit, err, out


@click.group()
def schedule() -> None:
    """Re-index archives on a schedule (cron expressions, UTC)."""


@schedule.command("add")
@click.argument("name")
@archive_argument
@click.option("--cron", required=True, help='When to run, five cron fields in UTC, e.g. "0 2 * * *" (02:00 daily).')
@out_option
@db_option
@click.option("--executor", type=click.Choice(EXECUTORS), default="ray", show_default=True)
@executor_options
@plan_options
@device_option
@engine_option
@engine_start_option()
@sampling_options
@face_detector_option
@json_option
def add_cmd(name: str, archive: Path | str, cron: str, out_dir: str, db_url: str | None, executor: str,
            executor_args: ExecutorArgs, reprocess_stale: bool, retry_failed: bool, device: str, engine: str,
            engine_start: str, sample_fps: float, every_frame: bool, keyframes: bool, min_face: int, no_persons: bool,
            persons_every: float, face_detector: FaceDetectorArgs, as_json: bool) -> None:
    """Add schedule NAME: index ARCHIVE incrementally whenever --cron says (new and changed videos;
    stale ones, indexed by another run, unless --keep-stale)."""
    from jobs.schedule import add_schedule

    settings = build_settings(device, engine, sample_fps, every_frame, keyframes, min_face, no_persons, face_detector,
                              persons_every, engine_start)
    options = {"out": out_dir, "settings": settings.to_json(), "reprocess_stale": reprocess_stale,
               "retry_failed": retry_failed,
               "executor": executor_args.to_json(executor, device)}
    info = add_schedule(open_catalog(out_dir, db_url, create=True), name, resolved_archive(archive), cron, options)
    emit(info.to_json(), as_json,
         lambda i: out.print(f"schedule {i['name']}: {i['cron']} (UTC), next run {i['next_run_at']}"))


@schedule.command("list")
@out_option
@db_option
@json_option
def list_cmd(out_dir: str, db_url: str | None, as_json: bool) -> None:
    """The schedules, with their next and last runs."""
    from jobs.schedule import list_schedules

    rows = [s.to_json() for s in list_schedules(open_catalog(out_dir, db_url))]

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("name", "cron (UTC)", "next run", "last run", "last job", "archive")
        for r in rows:
            table.add_row(r["name"], r["cron"], r["next_run_at"] or "", r["last_run_at"] or "",
                          str(r["last_job_id"] or ""), r["archive"])
        out.print(table)

    emit(rows, as_json, render)


@schedule.command("remove")
@click.argument("name")
@out_option
@db_option
def remove_cmd(name: str, out_dir: str, db_url: str | None) -> None:
    """Remove schedule NAME (its jobs stay)."""
    from jobs.schedule import remove_schedule

    remove_schedule(open_catalog(out_dir, db_url), name)
    err.print(f"schedule {name} removed")


def _submitter(ctx: Context, catalog: Any, quiet: bool) -> Any:
    """Runs a claimed schedule's job in the foreground with a progress bar; returns the job id."""
    from jobs.schedule import run_claimed
    from vidx.progress import JobProgress

    def submit(claimed: Any) -> int:
        if not quiet:
            err.print(f"schedule {claimed.name}: slot {claimed.slot:%Y-%m-%d %H:%M} UTC, indexing {claimed.archive}")
        with JobProgress(quiet=quiet) as progress:
            result = run_claimed(claimed, catalog=catalog, events=progress.events(), cache_dir=ctx.cache_dir)
        refresh_after_job(catalog, claimed.options["out"])
        return result.job_id

    return submit


@schedule.command("run-due")
@out_option
@db_option
@json_option
@pass_ctx
def run_due_cmd(ctx: Context, out_dir: str, db_url: str | None, as_json: bool) -> None:
    """Run every schedule that is due now, once (for system cron or a systemd timer)."""
    from jobs.schedule import run_due

    catalog = open_catalog(out_dir, db_url)
    results = [r.to_json() for r in run_due(catalog, _submitter(ctx, catalog, as_json))]
    emit(results, as_json, lambda rs: err.print(
        "nothing due" if not rs else "\n".join(f"schedule {r['schedule']}: job {r['job_id']}"
                                               + (f" error: {r['error']}" if r["error"] else "") for r in rs)))


@click.command("scheduler")
@out_option
@db_option
@click.option("--max-sleep", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Longest wait between looks at the schedules (picks up ones added meanwhile).")
@click.option("--once", is_flag=True, help="One pass (like run-due), then exit.")
@pass_ctx
def scheduler_cmd(ctx: Context, out_dir: str, db_url: str | None, max_sleep: float, once: bool) -> None:
    """Run schedules as they fall due, forever (several schedulers may share one index safely)."""
    from jobs.schedule import run_due, seconds_until_next

    catalog = open_catalog(out_dir, db_url)
    submit = _submitter(ctx, catalog, False)
    while True:
        for r in run_due(catalog, submit):
            err.print(f"schedule {r.schedule}: job {r.job_id}" + (f" error: {r.error}" if r.error else ""))
        if once:
            return
        wait = seconds_until_next(catalog)
        time.sleep(min(max_sleep, wait if wait is not None else max_sleep) + 0.5)
