"""A job's progress in the terminal: seconds of video analysed, their rate and the ETA; then a summary."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from catalog.outcome import VideoOutcome
from jobs.runner import DriverSummary, JobEvents
from vidx.output import err, out

SLOW_MODELS_S = 15.0
"""GPU workers whose models took longer than this to set up (`--engine-start wait`) get the hint of the default."""


class JobProgress:
    """The bar counts seconds of video: one long video moves it, with a rate and an ETA, from its first step.

    The total is the queued videos' lengths, read from their headers on a background thread (until then the
    bar has no total). The in-process executor reports each analysis step; Ray's workers whole videos only.
    """

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.fields[seconds]}"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err, disable=quiet, transient=False)
        self.task = self.progress.add_task("indexing", total=None, seconds="", rate="")
        self.frames = 0
        self.videos_done = 0
        self.videos = 0
        self.credited: dict[str, float] = {}
        """Seconds of each video counted so far."""
        self.lengths: dict[str, float] = {}
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def __enter__(self) -> JobProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(t, e, tb)

    def events(self) -> JobEvents:
        return JobEvents(on_plan=self.on_plan, on_video=self.on_video, on_workers=self.on_workers,
                         on_start=self.on_start, on_progress=self.on_progress)

    def on_plan(self, counts: dict[str, int]) -> None:
        self.videos = counts["queued"]
        self._show()
        if not self.quiet:
            err.print(describe_plan(counts), highlight=False)

    def on_start(self, paths: list[str]) -> None:
        from indexer.decode.pyav import header_duration

        self.started = time.monotonic()

        def probe() -> None:
            lengths = {p: header_duration(p) or 0.0 for p in paths}
            with self.lock:
                self.lengths = lengths
                self.progress.update(self.task, total=max(sum(lengths.values()), self._completed()))
                self._show()

        threading.Thread(target=probe, name="vidx-probe-lengths", daemon=True).start()

    def on_workers(self, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        for k, v in info.items():
            err.print(f"[dim]{k}: {v}[/dim]")
        engines = " ".join(str(v) for v in info.values())
        if ("CUDA" in engines and "quick start" not in engines
                and float(info.get("models_ready_s") or 0) > SLOW_MODELS_S):
            err.print("[dim]hint: --engine-start background (the default) starts GPU workers in seconds and sets "
                      "the fastest models up behind them (docs/gpu.md)[/dim]")

    def on_progress(self, path: str, pts_s: float) -> None:
        with self.lock:
            self._credit(path, pts_s)

    def on_video(self, path: str, outcome: VideoOutcome) -> None:
        with self.lock:
            self.frames += outcome.frames_decoded
            self.videos_done += 1
            self._credit(path, outcome.duration_s or self.lengths.get(path) or self.credited.get(path, 0.0))
        if outcome.status == "failed" and not self.quiet:
            err.print(f"[red]failed[/red] {path}: {outcome.error}", highlight=False)

    def _credit(self, path: str, seconds: float) -> None:
        """Count a video as analysed up to `seconds` (a video's count only grows)."""
        before = self.credited.get(path, 0.0)
        if seconds > before:
            self.credited[path] = seconds
            self.progress.update(self.task, advance=seconds - before)
        self._show()

    def _completed(self) -> float:
        return sum(self.credited.values())

    def _show(self) -> None:
        task = self.progress.tasks[0]
        elapsed = max(time.monotonic() - self.started, 1e-6)
        total = f"{task.total:,.1f}" if task.total is not None else "?"
        self.progress.update(
            self.task, description=f"indexing {self.videos_done}/{self.videos} videos",
            seconds=f"{task.completed:,.1f}/{total} video-s",
            rate=f"{task.completed / elapsed:,.2f} video-s/s, {self.frames / elapsed:,.0f} frames/s")

    @staticmethod
    def render_summary(s: DriverSummary, out_dir: str, db: str) -> None:
        out.print(f"job {s.job_id}: {s.done} indexed, {s.skipped} skipped, {s.failed} failed"
                  + (f", {len(s.unreadable)} unreadable" if s.unreadable else "")
                  + f"; {s.frames_decoded:,} frames decoded")
        out.print(f"found {s.faces:,} faces, {s.persons:,} persons, {s.tracks:,} face tracks "
                  f"in {s.video_s:,.1f} s of video")
        first, working, in_all = (s.seconds.get(k) for k in ("to_first_video", "working", "in_all"))
        if first is not None and working and in_all is not None:
            out.print(f"indexing took {in_all:,.1f} s: the first video started after {first:,.1f} s (workers and "
                      f"models starting), then {s.video_s:,.1f} s of video in {working:,.1f} s "
                      f"({s.video_s / working:,.1f}x real time)")
        for f in s.failures:
            out.print(f"  [red]failed[/red] {f['path']}: {f['error']}", highlight=False)
        for u in s.unreadable:
            out.print(f"  [yellow]skipped[/yellow] {u['path']}: {u['error']}", highlight=False)
        if s.workers_replaced:
            n = len(s.workers_replaced)
            out.print(f"{n} worker{'s' if n != 1 else ''} replaced:")
            for why in s.workers_replaced:
                out.print(f"  [yellow]replaced[/yellow] {why}", highlight=False)
        out.print(f"results: {out_dir} · index: {db}")


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
