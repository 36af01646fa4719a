"""A job's progress in the terminal: videos done, frames per second, ETA; then a summary."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jobs.outcome import VideoOutcome
from jobs.runner import JobEvents
from vidx.output import err, out


class JobProgress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err, disable=quiet, transient=False)
        self.task = self.progress.add_task("indexing", total=None, rate="")
        self.frames = 0
        self.started = time.monotonic()

    def __enter__(self) -> JobProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(t, e, tb)

    def events(self) -> JobEvents:
        return JobEvents(on_plan=self.on_plan, on_video=self.on_video, on_workers=self.on_workers)

    def on_plan(self, counts: dict[str, int]) -> None:
        self.progress.update(self.task, total=counts["queued"])
        if not self.quiet:
            err.print(describe_plan(counts), highlight=False)

    def on_workers(self, info: dict[str, Any]) -> None:
        if not self.quiet:
            for k, v in info.items():
                err.print(f"[dim]{k}: {v}[/dim]")

    def on_video(self, path: str, outcome: VideoOutcome) -> None:
        self.frames += outcome.frames_decoded
        rate = self.frames / max(time.monotonic() - self.started, 1e-6)
        self.progress.update(self.task, advance=1, rate=f"{rate:,.0f} frames/s")
        if outcome.status == "failed" and not self.quiet:
            err.print(f"[red]failed[/red] {path}: {outcome.error}", highlight=False)

    @staticmethod
    def render_summary(s: dict[str, Any]) -> None:
        out.print(f"job {s['job_id']}: {s['done']} indexed, {s['skipped']} skipped, {s['failed']} failed"
                  + (f", {len(s['unreadable'])} unreadable" if s["unreadable"] else "")
                  + f"; {s['frames_decoded']:,} frames decoded")
        for f in s["failures"]:
            out.print(f"  [red]failed[/red] {f['path']}: {f['error']}", highlight=False)
        for f in s["unreadable"]:
            out.print(f"  [yellow]skipped[/yellow] {f['path']}: {f['error']}", highlight=False)
        out.print(f"results: {s['out']} · index: {s['db']}")


def describe_plan(c: dict[str, int]) -> str:
    """What a job is about to do, in words: `2 videos to index (1 new, 1 indexed with other settings or models
    before), 3 already current`. A resumed job has no per-kind counts: then queued and finished only."""
    queued = c["queued"]
    why = [f"{c[k]} {label}" for k, label in (("new", "new"), ("changed", "changed on disk"),
                                              ("stale", "indexed with other settings or models before"),
                                              ("retry", "to try again")) if c.get(k)]
    parts = [f"{queued} video{'s' if queued != 1 else ''} to index" + (f" ({', '.join(why)})" if why else "")]
    if "current" in c:
        parts.append(f"{c['current']} already current")
        if c.get("stale_kept"):
            parts.append(f"{c['stale_kept']} indexed with other settings or models, kept (--keep-stale)")
        if c.get("failed_before"):
            parts.append(f"{c['failed_before']} failed before (--retry-failed tries again)")
    else:
        parts.append(f"{c.get('finished', 0)} finished, {c['skipped']} skipped")
    if c.get("unreadable"):
        parts.append(f"{c['unreadable']} unreadable")
    return ", ".join(parts)
