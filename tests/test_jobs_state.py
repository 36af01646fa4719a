"""Job state without Ray: two jobs over one archive at once, incremental resubmits, stale runs, cancel, CLI.

Tests that take `db_url` run on SQLite and, with VIDX_TEST_POSTGRES_URL, on PostgreSQL too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badfiles import noise  # tests/badfiles.py
from click.testing import CliRunner
from jobchecks import assert_each_video_indexed_once, tasks_of, track_spans  # tests/jobchecks.py
from sqlalchemy import func, select

from bench.jobs import PHOTOS, make_clip, make_short_archive
from catalog import job_state as state
from catalog.db import Catalog, default_db_url
from catalog.outcome import VideoOutcome
from engines.photos import load_photo
from jobs.runner import JobEvents, JobResult, LocalExecutor, PlanOptions, _Heartbeat, plan, resume_job, run_job
from jobs.worker import FAULTS_ENV
from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig
from schemas.sql import Task, Track, Video
from vidx.cli import cli

SETTINGS = IndexSettings(runtime=RuntimeConfig(device="cpu"))


@pytest.fixture(scope="module")
def clip_photos(cache_dir: Path) -> dict[str, np.ndarray]:
    return {n: load_photo(n, cache_dir) for n in PHOTOS}


def test_two_jobs_over_one_archive_at_once_index_each_video_once(
        db_url: str, tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", clip_photos, 8)
    out = tmp_path / "out"
    url = db_url
    results: list[JobResult] = []
    lock = threading.Lock()

    def one_driver() -> None:
        catalog = Catalog(url)  # its own connections, as a second `vidx job submit` would have
        r = run_job(tmp_path / "a", catalog=catalog, out_uri=str(out), settings=SETTINGS, executor=LocalExecutor(),
                    cache_dir=cache_dir)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one_driver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 2
    catalog = Catalog(url)
    with catalog.session() as s:
        done = Counter(s.scalars(select(Task.video_id).where(Task.status == "done")))
        skipped = list(s.scalars(select(Task.error).where(Task.status == "skipped")))
    assert len(done) == 8 and set(done.values()) == {1}  # every video by exactly one of the two jobs
    assert sum(r.summary.done for r in results) == 8
    reasons = [e or "" for e in skipped]
    assert len(reasons) == 8 and all(e.startswith(("indexed meanwhile by job", "already indexed")) for e in reasons)


def test_resubmits_are_incremental_and_a_changed_setting_replaces_old_results(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    archive = tmp_path / "a"
    clips = make_short_archive(archive, clip_photos, 3)
    (archive / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 3000)
    out = tmp_path / "out"
    catalog = Catalog(default_db_url(out))

    def submit(settings: IndexSettings, **kw: bool) -> JobResult:
        return run_job(archive, catalog=catalog, out_uri=str(out), settings=settings, executor=LocalExecutor(),
                       cache_dir=cache_dir, options=PlanOptions(**kw))

    first = submit(SETTINGS)
    assert (first.summary.done, first.summary.failed) == (3, 1)
    again = submit(SETTINGS)  # nothing new: the corrupt file is not retried either
    assert (again.summary.done, again.summary.failed, again.summary.skipped, again.workers) == (0, 0, 4, {})
    assert submit(SETTINGS, retry_failed=True).summary.failed == 1

    clips[0].write_bytes(clips[1].read_bytes())  # a changed file is redone
    changed = submit(SETTINGS)
    assert (changed.summary.done, changed.summary.skipped) == (1, 3)

    other = IndexSettings(sampling=SamplingConfig(fps=1.0), runtime=RuntimeConfig(device="cpu"))
    kept = submit(other, reprocess_stale=False)
    # With --keep-stale, indexed videos are stale for the new run and left alone; the corrupt one is tried once.
    assert (kept.summary.done, kept.summary.failed, kept.summary.skipped) == (0, 1, 3)
    with catalog.session() as s:
        reasons = set(s.scalars(select(Task.error).where(Task.job_id == kept.job_id)))
    assert any("--keep-stale" in (r or "") for r in reasons)
    old_parts = sorted(p.name for p in (out / "faces").glob("*.parquet"))
    redo = submit(other)  # by default, a setting that changes results re-indexes what it makes stale
    assert redo.summary.done == 3 and redo.summary.plan["stale"] == 3
    new_parts = sorted(p.name for p in (out / "faces").glob("*.parquet"))
    assert len(new_parts) == 3 and not set(old_parts) & set(new_parts)  # old run's parts replaced
    with catalog.session() as s:
        runs = set(s.scalars(select(Track.run_id)))
        live = set(s.scalars(select(Video.run_id).where(Video.status == "indexed")))
    assert runs == live and len(runs) == 1


def test_job_cli_status_list_cancel_and_resume(tmp_path: Path, clip_photos: dict[str, np.ndarray],
                                               cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", clip_photos, 2)
    out = tmp_path / "out"
    catalog = Catalog(default_db_url(out))
    # A planned job nobody drives yet (what --detach leaves for its background driver).
    job_id, queued, _, _ = plan(tmp_path / "a", catalog=catalog, out_uri=str(out), settings=SETTINGS,
                                cache_dir=cache_dir, status="queued")
    assert queued == 2
    runner = CliRunner()
    base = ["--cache-dir", str(cache_dir)]
    res = runner.invoke(cli, [*base, "job", "status", str(job_id), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert (info["status"], info["queued"], info["alive"]) == ("queued", 2, False)
    res = runner.invoke(cli, [*base, "job", "cancel", str(job_id), "--out", str(out), "--json"])
    assert json.loads(res.output)["status"] == "cancelled"
    res = runner.invoke(cli, [*base, "job", "resume", str(job_id), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert (summary["status"], summary["done"]) == ("done", 2)
    res = runner.invoke(cli, [*base, "job", "list", "--out", str(out), "--json"])
    rows = json.loads(res.output)
    assert rows[0]["job_id"] == job_id and rows[0]["status"] == "done" and rows[0]["done"] == 2
    res = runner.invoke(cli, [*base, "job", "resume", str(job_id), "--out", str(out)])
    assert res.exit_code != 0 and "already done" in str(res.exception)
    with pytest.raises(state.JobStateError, match="no job 999"):
        state.get_job(catalog, 999)


@dataclass
class HeldJob:
    catalog: Catalog
    job_id: int
    driver: threading.Thread
    results: list[JobResult]
    release: threading.Event

    def finish(self) -> JobResult:
        self.release.set()
        self.driver.join(120)
        assert not self.driver.is_alive()
        return self.results[0]


def held_job(tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path, n_videos: int,
             seconds: tuple[float, float]) -> HeldJob:
    """A job over a new archive, driven in a thread of this process and held once its first video is recorded
    until `finish()` (so that a request made meanwhile is seen before the job can finish)."""
    make_short_archive(tmp_path / "a", clip_photos, n_videos, seconds=seconds)
    catalog = Catalog(default_db_url(tmp_path / "out"))
    first_done, release = threading.Event(), threading.Event()

    def hold_after_first(path: str, outcome: VideoOutcome) -> None:
        if not first_done.is_set():
            first_done.set()
            release.wait(120)

    results: list[JobResult] = []
    driver = threading.Thread(target=lambda: results.append(run_job(
        tmp_path / "a", catalog=catalog, out_uri=str(tmp_path / "out"), settings=SETTINGS,
        executor=LocalExecutor(), cache_dir=cache_dir, events=JobEvents(on_video=hold_after_first))))
    driver.start()
    assert first_done.wait(120), "no video done in 120 s"
    return HeldJob(catalog, state.list_jobs(catalog)[0].job_id, driver, results, release)


def heartbeat_of(job_id: int) -> _Heartbeat:
    (beat,) = [t for t in threading.enumerate() if isinstance(t, _Heartbeat) and t.job_id == job_id]
    return beat


def test_cancel_stops_a_live_driver_and_resume_finishes_the_job(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    # A live driver sees a cancel at its next heartbeat (every HEARTBEAT_S), and the other 7 videos can take less
    # than that after the first is done: left alone, the job could finish before the cancel is noticed.
    held = held_job(tmp_path, clip_photos, cache_dir, 8, (2.0, 3.0))
    catalog, job_id = held.catalog, held.job_id
    try:
        at_cancel = state.job_info(catalog, job_id)  # work is left: this tests a cancel, not a finished job
        # The next video may already be claimed: its decoding starts while the first one's last frames are analysed.
        assert (at_cancel.status, at_cancel.done, at_cancel.queued + at_cancel.running) == (
            "running", 1, 7), at_cancel
        assert at_cancel.running <= 1, at_cancel
        assert state.cancel(catalog, job_id) == "cancelling"  # the driver is alive: it is asked to stop
        assert heartbeat_of(job_id).cancelled.wait(10 * state.HEARTBEAT_S), "the heartbeat never saw the cancel"
    finally:
        summary = held.finish().summary
    # A cancel stops the claims; the video already claimed at the cancel (if any) is finished, not abandoned.
    assert (summary.status, summary.done, summary.running, summary.queued) == (
        "cancelled", 1 + at_cancel.running, 0, 7 - at_cancel.running), (summary, at_cancel)
    assert state.job_info(catalog, job_id).status == "cancelled"
    resumed = resume_job(job_id, catalog=catalog, executor=LocalExecutor(), cache_dir=cache_dir)
    assert (resumed.summary.status, resumed.summary.done) == ("done", 8)


def test_a_driver_taken_over_by_force_stops_and_leaves_the_job_to_the_new_one(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    """`vidx job resume --force` while the driver still runs: the old driver sees at its next beat that the job
    is not its own any more, claims nothing more, and neither re-queues the new driver's videos nor writes the
    job's end; the job is the new driver's (its beats are the ones written)."""
    held = held_job(tmp_path, clip_photos, cache_dir, 4, (1.0, 2.0))
    catalog, job_id = held.catalog, held.job_id
    try:
        with pytest.raises(state.JobStateError, match="still being driven"):
            state.take_over(catalog, job_id, "other-host:7")
        state.take_over(catalog, job_id, "other-host:7", force=True)
        assert heartbeat_of(job_id).taken_over.wait(10 * state.HEARTBEAT_S), "the old driver never noticed"
        assert state.heartbeat(catalog, job_id, state.driver_id()) == state.TAKEN_OVER
        assert state.job_info(catalog, job_id).queued > 0
        assert state.claim_next(catalog, job_id, "late", driver=state.driver_id()) is None  # its claims end too
    finally:
        result = held.finish()
    assert result.summary.status == state.TAKEN_OVER
    job = state.get_job(catalog, job_id)
    assert (job.status, job.driver, job.finished_at) == ("running", "other-host:7", None)
    assert result.summary.done < 4  # it stopped claiming
    resumed = resume_job(job_id, catalog=catalog, executor=LocalExecutor(), cache_dir=cache_dir, force=True)
    assert (resumed.summary.status, resumed.summary.done, resumed.summary.failed) == ("done", 4, 0)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Video).where(Video.status == "indexed")) == 4
    catalog.close()


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal. An ignored or blocked SIGINT is inherited through fork and exec
    (a shell's `cmd &`, or a library in the test process that blocked it), and then Python never raises
    KeyboardInterrupt: the job runs on (exit 0) or stays in its hang (seen in CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_requeues_the_running_video_and_a_detached_resume_finishes(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    archive = tmp_path / "a"
    make_short_archive(archive, clip_photos, 5, seconds=(2.0, 3.0))
    # Without it the job could finish before the signal: the other five take ~2 s after the first is done,
    # and a busy machine can keep the test from noticing for longer. Smallest, so claimed last, this one
    # hangs the first driver (like a stuck decoder), and the job cannot end before the Ctrl-C; the signal
    # still usually lands while a real video is being indexed.
    make_clip(archive / "hang_me.mp4", clip_photos["biden"], seconds=1.0)
    assert min(archive.iterdir(), key=lambda p: p.stat().st_size).name == "hang_me.mp4"
    out = tmp_path / "out"
    env = {**os.environ, "VIDX_CACHE_DIR": str(cache_dir), FAULTS_ENV: "hang=hang_me"}
    proc = subprocess.Popen([sys.executable, "-m", "vidx", "index", str(archive), "--out", str(out),
                             "--device", "cpu", "--json"], env=env, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "stderr.txt").open("wb"), preexec_fn=default_sigint)
    catalog = Catalog(default_db_url(out))  # creates the index if the driver has not yet: never a missing table

    def stderr() -> str:
        return (tmp_path / "stderr.txt").read_text(errors="replace")[-6000:]

    def task_counts() -> dict[str, int]:
        with catalog.session() as s:
            return {status: n for status, n in s.execute(select(Task.status, func.count()).group_by(Task.status))}

    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, stderr()
            counts = catalog.retry("poll", task_counts)  # a busy database is retried, never silently skipped
            if counts.get("done", 0) >= 1:
                break
            assert time.monotonic() < deadline, f"no video done in 120 s: {counts}"
            time.sleep(0.05)
        # Work is left at the moment of the signal: what follows tests an interrupted job, not a finished one.
        assert counts.get("queued", 0) + counts.get("running", 0) >= 1 and proc.poll() is None, counts
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # vidx dumps every thread's stack: say where it is stuck
            time.sleep(2)
            pytest.fail(f"vidx did not stop within 60 s of Ctrl-C; its stacks:\n{stderr()}")
        assert code == 130, stderr()
    finally:
        if proc.poll() is None:
            proc.kill()
    job = state.list_jobs(catalog)[0]
    assert job.status == "interrupted" and job.counts.get("running", 0) == 0 and job.counts.get("queued", 0) >= 1
    assert 1 <= job.counts.get("done", 0) <= 5  # the hanging video is never done by this driver

    runner = CliRunner()
    res = runner.invoke(cli, ["--cache-dir", str(cache_dir), "job", "submit", str(archive), "--out", str(out),
                              "--executor", "local", "--device", "cpu", "--detach", "--json"])
    assert res.exit_code == 0, res.output
    detached = json.loads(res.output)
    assert detached["queued"] == 6 - job.counts.get("done", 0)  # only what the interrupted job did not finish
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = state.job_info(catalog, detached["job_id"])
        if info.status not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert (info.status, info.done + info.skipped) == ("done", 6), Path(detached["log"]).read_text()


def test_a_video_that_crashes_the_in_process_driver_is_failed_on_resume_after_its_attempts(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    archive = tmp_path / "a"
    make_short_archive(archive, clip_photos, 2, seconds=(1.0,))
    make_clip(archive / "segv_me.mp4", clip_photos["biden"], seconds=3.0)  # the largest: claimed first
    out = tmp_path / "out"
    env = {**os.environ, "VIDX_CACHE_DIR": str(cache_dir), FAULTS_ENV: "crash=segv_me"}
    proc = subprocess.run([sys.executable, "-m", "vidx", "index", str(archive), "--out", str(out), "--device", "cpu",
                           "--max-attempts", "1", "--json"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr.decode()[-2000:]  # no containment in-process
    catalog = Catalog(default_db_url(out))
    job_id = state.list_jobs(catalog)[0].job_id
    result = resume_job(job_id, catalog=catalog, executor=LocalExecutor(), cache_dir=cache_dir)
    assert (result.summary.done, result.summary.failed) == (2, 1)
    (failure,) = result.summary.failures
    assert failure["path"].endswith("segv_me.mp4") and "died during each of 1 attempts" in failure["error"]


def test_in_process_job_with_videos_in_flight_gives_the_one_at_a_time_results(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    """LocalExecutor through VideoWorker.process_many: 3 videos in flight share the models' steps; a garbage
    file among them fails alone; every video gets the tracks the one-at-a-time run gives it."""
    make_short_archive(tmp_path / "a", clip_photos, 4, seconds=(1.0, 2.0))
    (tmp_path / "a" / "garbage.mp4").write_bytes(noise(4096))
    results = {}
    for in_flight in (1, 3):
        catalog = Catalog(default_db_url(tmp_path / f"out{in_flight}"))
        settings = IndexSettings(runtime=RuntimeConfig(device="cpu", videos_in_flight=in_flight, frame_batch=4))
        result = run_job(tmp_path / "a", catalog=catalog, out_uri=str(tmp_path / f"out{in_flight}"), settings=settings,
                         executor=LocalExecutor(), cache_dir=cache_dir)
        assert (result.summary.done, result.summary.failed) == (4, 1), result.summary
        assert "garbage.mp4" in result.summary.failures[0]["path"]
        with catalog.session() as s:
            assert s.scalar(select(func.count()).select_from(Task).where(Task.status == "running")) == 0
        results[in_flight] = track_spans(catalog)
        catalog.close()
    assert len({name for name, *_ in results[1]}) >= 3  # face tracks in most clips (one photo is a small group)
    assert results[3] == results[1]


def wait_for_exit(pid: int, timeout: float = 120) -> None:
    """Reap a detached driver this process started (it exits once its job is driven or it failed)."""
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, f"driver {pid} still running after {timeout} s"
        time.sleep(0.2)


def test_a_detached_driver_is_not_shadowed_by_the_working_directory_and_a_dead_one_shows_its_error(
        indexed: tuple[list, Path, Catalog, JobResult], private_out: Callable[[str], Path], tmp_path: Path,
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = Path(indexed[0][0].path).parent  # already indexed: the driver has nothing to do but finish
    out = private_out("detached")
    shadow = tmp_path / "parent_of_a_clone"
    (shadow / "vidx").mkdir(parents=True)
    (shadow / "vidx" / "__init__.py").write_text("")
    monkeypatch.chdir(shadow)

    def submit() -> dict[str, Any]:
        res = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), "job", "submit", str(archive), "--out",
                                       str(out), "--executor", "local", "--device", "cpu", "--detach", "--json"])
        assert res.exit_code == 0, res.output
        detached = json.loads(res.output)
        wait_for_exit(detached["driver_pid"])
        res = CliRunner().invoke(cli, ["job", "status", str(detached["job_id"]), "--out", str(out), "--json"])
        assert res.exit_code == 0, res.output
        return {**json.loads(res.output), "log_text": Path(detached["log"]).read_text(errors="replace")}

    info = submit()
    assert (info["status"], info["driver_gone"]) == ("done", False), info["log_text"]

    # A driver that cannot start (here a broken `vidx` named on PYTHONPATH) leaves its job queued: status says
    # that its driver is gone, with the end of its log.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]))
    info = submit()
    assert (info["status"], info["driver_gone"]) == ("queued", True), info
    assert any("vidx" in line for line in info["driver_error"]), info
    res = CliRunner().invoke(cli, ["job", "status", str(info["job_id"]), "--out", str(out)])
    assert "driver gone" in res.output and info["driver_error"][-1] in res.output


def test_a_setting_that_changes_results_re_indexes_and_says_so(tmp_path: Path, clip_photos: dict[str, np.ndarray],
                                                               cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", clip_photos, 1, seconds=(1.0,))
    base = ["--cache-dir", str(cache_dir), "index", str(tmp_path / "a"), "--out", str(tmp_path / "out"),
            "--device", "cpu"]

    def index(*args: str) -> tuple[dict[str, Any], str]:
        res = CliRunner().invoke(cli, [*base, *args])
        assert res.exit_code == 0, res.output
        status = CliRunner().invoke(cli, ["job", "status", "--out", str(tmp_path / "out"), "--json"])
        return json.loads(status.stdout), res.stderr

    first, _ = index()
    assert first["done"] == 1
    again, said = index()
    assert again["done"] == 0 and "0 videos to index, 1 already current" in said
    finer, said = index("--min-face", "12")
    assert finer["done"] == 1, said
    assert "1 video to index (1 indexed with other settings or models before), 0 already current" in said
    kept, said = index("--min-face", "16", "--keep-stale")
    assert kept["done"] == 0 and "1 indexed with other settings or models, kept (--keep-stale)" in said


def test_progress_counts_seconds_of_video_with_a_rate_and_an_eta_and_the_summary_counts_what_was_found(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from vidx.progress import JobProgress

    clips = make_short_archive(tmp_path / "a", clip_photos, 2, seconds=(2.5, 2.0))
    seen: list[tuple[float, float | None, float | None, int]] = []  # completed, total, ETA, videos done
    with JobProgress() as progress:
        events = progress.events()
        inner_progress, inner_video = events.on_progress, events.on_video

        def on_progress(path: str, pts_s: float) -> None:
            inner_progress(path, pts_s)
            task = progress.progress.tasks[0]
            seen.append((task.completed, task.total, task.time_remaining, progress.videos_done))

        def on_video(path: str, outcome: VideoOutcome) -> None:
            inner_video(path, outcome)
            time.sleep(0.3)  # the lengths are read on a thread: let it finish before the second video

        workers: list[dict[str, object]] = []
        events.on_progress, events.on_video, events.on_workers = on_progress, on_video, workers.append
        out = tmp_path / "out"
        result = run_job(tmp_path / "a", catalog=Catalog(default_db_url(out)), out_uri=str(out), settings=SETTINGS,
                         executor=LocalExecutor(), cache_dir=cache_dir, events=events)
    assert seen, "no progress reported within a video"
    # Within the first video the bar already moved, by seconds of that video, before any video was done.
    assert any(completed > 0 and done == 0 for completed, _, _, done in seen), seen
    total = seen[-1][1]
    assert total is not None and abs(total - 4.5) < 0.2, seen  # both videos' lengths
    assert any(eta is not None and done == 1 for _, _, eta, done in seen), seen  # an ETA while work is left
    assert progress.progress.tasks[0].completed == pytest.approx(total, abs=0.2)
    assert float(str(workers[0]["models_ready_s"])) > 0  # how long the worker's models took to set up
    s = result.summary
    assert s.done == 2 and s.faces >= s.tracks >= 1 and s.persons >= 1, s
    assert s.video_s == pytest.approx(4.5, abs=0.2) and len(clips) == 2
    # the driver's clock: models set up before the first claim, then the work, slept over between the videos
    first, working, in_all = (s.seconds[k] for k in ("to_first_video", "working", "in_all"))
    assert first is not None and working is not None and in_all is not None, s.seconds
    assert first > 0 and working > 0.3 and first + working <= in_all, s.seconds
    JobProgress.render_summary(s, str(out), "sqlite://")
    said = capsys.readouterr().out
    assert f"the first video started after {first:,.1f} s (workers and models starting), then 4.5 s of video in " \
        f"{working:,.1f} s" in said, said


def test_a_worker_that_aborted_is_heard_in_whole_lines_and_its_last_words_name_the_message_signal_and_frame(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A process with many threads that aborts in a library (as a C++ exception nobody catches does) with
    Python's fatal-error report on, as vidx's worker processes have it, its output read as the driver reads a
    worker's: passed on in whole lines, and its last words are the library's message, the signal and the innermost
    frame of the thread it hit, although every thread's stack makes the report longer than the output's tail."""
    from multiprocessing.connection import Connection

    from jobs.processes import TAIL_BYTES, WorkerOutput, last_words

    script = tmp_path / "crash.py"
    script.write_text("import faulthandler, os, sys, threading\n"
                      "faulthandler.enable(all_threads=True)\n"
                      "def deep(n, ready):\n"
                      "    return deep(n - 1, ready) if n else (ready.release(), threading.Event().wait())\n"
                      "def boom():\n"
                      "    sys.stderr.write('warming up\\nterminate called after throwing an instance of X\\n'\n"
                      "                     '  what():  CUDA failure 700: an illegal memory access\\n')\n"
                      "    sys.stderr.flush()\n"
                      "    os.abort()\n"
                      "ready = threading.Semaphore(0)\n"
                      "for _ in range(40):\n"
                      "    threading.Thread(target=deep, args=(30, ready), daemon=True).start()\n"
                      "for _ in range(40):\n"
                      "    ready.acquire()\n"
                      "boom()\n")
    read, write = os.pipe()
    output = WorkerOutput(Connection(read, writable=False))
    proc = subprocess.run([sys.executable, str(script)], stderr=write, timeout=60)
    os.close(write)
    assert proc.returncode == -signal.SIGABRT
    words = output.last_words(wait_s=10)
    said = capsys.readouterr().err
    assert len(said.encode()) > TAIL_BYTES and said.count(", line ") >= 40 * 30, len(said)  # longer than the tail
    assert all(", line " in line for line in said.splitlines() if 'File "' in line)  # lines passed on whole
    assert words.startswith("terminate called after throwing an instance of X | what():  CUDA failure 700"), words
    assert "| Fatal Python error: Aborted | in boom (" in words and "crash.py:9)" in words, words
    assert "warming up" not in words and "\n" not in words, words
    assert last_words("one\ntwo\n\nthree\nfour\n") == "two | three | four"  # no report: the last three lines
    assert last_words("") == ""


def test_worker_processes_give_the_in_process_results_and_a_crash_or_hang_fails_only_its_video(
        tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local executor with two worker processes (as on a GPU machine): every clip gets the tracks the
    in-process worker gives it; a video whose decoder segfaults takes down only its worker, and one whose
    decoder hangs gets its worker stopped after the stall timeout: each is tried again alone on a fresh worker
    and fails after its attempts; a garbage file fails with its own reason."""
    from jobs.executors import executor_from_options
    from jobs.processes import ProcessExecutor

    make_short_archive(tmp_path / "a", clip_photos, 2, seconds=(1.0, 1.5))
    one = Catalog(default_db_url(tmp_path / "one"))
    in_process = run_job(tmp_path / "a", catalog=one, out_uri=str(tmp_path / "one"), settings=SETTINGS,
                         executor=LocalExecutor(), cache_dir=cache_dir)
    make_clip(tmp_path / "a" / "segv_me.mp4", clip_photos["biden"], seconds=1.0)
    make_clip(tmp_path / "a" / "hang_me.mp4", clip_photos["obama"], seconds=1.0)
    (tmp_path / "a" / "garbage.mp4").write_bytes(noise(4096))
    monkeypatch.setenv(FAULTS_ENV, "crash=segv_me;hang=hang_me")  # the worker processes inherit it
    executor = executor_from_options({"kind": "local", "workers": 2, "max_attempts": 2, "stall_timeout_s": 5})
    catalog = Catalog(default_db_url(tmp_path / "two"))
    result = run_job(tmp_path / "a", catalog=catalog, out_uri=str(tmp_path / "two"), settings=SETTINGS,
                     executor=executor, cache_dir=cache_dir)
    inner = getattr(executor, "inner", None)
    assert isinstance(inner, ProcessExecutor) and inner.replaced >= 4  # a worker lost per attempt at each culprit
    replaced = result.summary.workers_replaced  # the summary names each, and why
    assert len(replaced) == inner.replaced, replaced
    assert any("exited with code -11 (SIGSEGV) with " in why and "in flight" in why for why in replaced), replaced
    # what the worker said last: the fault's log line, Python's fatal-error report and where the thread it hit was
    segv = next(why for why in replaced if "SIGSEGV" in why)
    assert "; it said last: " in segv and "crashing on" in segv and "segv_me.mp4" in segv, segv
    assert "Fatal Python error: Segmentation fault" in segv and "in batches (jobs/worker.py:" in segv, segv
    assert any("stopped: " in why and "hung" in why for why in replaced), replaced
    assert (result.summary.done, result.summary.failed) == (2, 3), result.summary
    by_name = {Path(t.path).name: t for t in tasks_of(catalog, result.job_id)}
    crash, hang, garbage = by_name["segv_me.mp4"], by_name["hang_me.mp4"], by_name["garbage.mp4"]
    assert crash.attempts == 2 and "worker process died" in (crash.error or ""), (crash.attempts, crash.error)
    assert hang.attempts == 2 and "hung" in (hang.error or ""), (hang.attempts, hang.error)
    assert "died" not in (garbage.error or "") and "hung" not in (garbage.error or ""), garbage.error
    assert result.workers["executor"] == "local" and result.workers["workers"].startswith("2 processes")
    assert in_process.summary.done == 2 and len({name for name, *_ in track_spans(catalog)}) == 2
    assert track_spans(catalog) == track_spans(one)
    assert_each_video_indexed_once(catalog, 2)


def test_a_worker_process_that_cannot_load_its_engines_says_why(tmp_path: Path, cache_dir: Path) -> None:
    from jobs.processes import ProcessExecutor, WorkerStartError

    executor = ProcessExecutor(1)
    try:
        with pytest.raises(WorkerStartError, match=r"worker0 could not load its engines: .*tensorrt"):
            executor.start(IndexSettings(runtime=RuntimeConfig(device="cpu", engine="tensorrt")), str(tmp_path / "out"),
                           cache_dir)
    finally:
        executor.close()


def _spawned_children(pid: int) -> list[int]:
    """Worker processes (multiprocessing spawn) whose parent is `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and b"spawn_main" in cmd:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_worker_processes_exit_when_their_driver_is_killed(tmp_path: Path, clip_photos: dict[str, np.ndarray],
                                                           cache_dir: Path) -> None:
    """A driver killed outright (SIGKILL: no clean-up runs) leaves no worker process behind, not even one whose
    decoder hangs: each notices within seconds that its driver is gone and exits (on a GPU an orphan would
    hold its memory)."""
    make_short_archive(tmp_path / "a", clip_photos, 2, seconds=(2.0,))
    env = {**os.environ, "VIDX_CACHE_DIR": str(cache_dir), FAULTS_ENV: "hang=clip_000"}
    proc = subprocess.Popen([sys.executable, "-m", "vidx", "index", str(tmp_path / "a"), "--out", str(tmp_path / "out"),
                             "--device", "cpu", "--workers", "2", "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(children := _spawned_children(proc.pid)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the two worker processes never started"
            time.sleep(0.2)
        time.sleep(8)  # engines loaded, a video hanging in one worker
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if _alive(pid)]
        time.sleep(0.2)


def test_workers_whose_models_set_up_slowly_get_the_engine_start_hint() -> None:
    from vidx.output import err
    from vidx.progress import JobProgress

    progress = JobProgress()
    with err.capture() as slow:
        progress.on_workers({"face_detector": "onnxruntime CUDAExecutionProvider FP16", "models_ready_s": "33.4"})
    with err.capture() as quick:
        progress.on_workers({"face_detector": "onnxruntime CUDAExecutionProvider FP16 NHWC fused, quick start, "
                                              "fastest set up behind", "models_ready_s": "3.3"})
    with err.capture() as cpu:  # a CPU worker converting its models on first use: the engine start would not help
        progress.on_workers({"face_detector": "onnxruntime CPUExecutionProvider", "models_ready_s": "40.0"})
    assert "models_ready_s: 33.4" in slow.get() and "--engine-start background" in slow.get()
    assert "--engine-start" not in quick.get() and "--engine-start" not in cpu.get()
