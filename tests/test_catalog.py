"""The SQL index on SQLite and PostgreSQL: register, record, claim, re-run, supersede, faults.

Every test that takes `db_url` runs once on SQLite and once on a fresh PostgreSQL database
(VIDX_TEST_POSTGRES_URL; .ci/run starts a server), or skips the PostgreSQL case with that reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.engine import make_url

import schemas.sql
from catalog import job_state as state
from catalog.archive import VideoFile
from catalog.db import Catalog, IndexError_, pgvector_status
from catalog.outcome import TrackRow, VideoOutcome
from schemas.sql import Job, Task, Track, Video

RUN_A = ("a" * 32, "1", {"face": "m1"}, {"fps": 2})
RUN_B = ("b" * 32, "1", {"face": "m2"}, {"fps": 2})


def make_files(root: Path, sizes: dict[str, int]) -> list[VideoFile]:
    out = []
    for name, size in sizes.items():
        p = root / name
        p.write_bytes(os.urandom(size))
        st = p.stat()
        out.append(VideoFile(p, st.st_size, st.st_mtime))
    return out


def tracks(n: int, thumb_prefix: str) -> list[TrackRow]:
    return [TrackRow(track_index=i, start_s=float(i), end_s=i + 1.0, n_faces=3, embedding=bytes(512), quality=0.5,
                     best_pts_s=i + 0.5, thumbnail=f"{thumb_prefix}/{i}.jpg") for i in range(n)]


def count_tracks(catalog: Catalog, video_id: int) -> int:
    with catalog.session() as s:
        return int(s.scalar(select(func.count()).select_from(Track).where(Track.video_id == video_id)) or 0)


def test_register_upserts_and_refingerprints_only_changed_files(db_url: str, tmp_path: Path) -> None:
    catalog = Catalog(db_url)
    files = make_files(tmp_path, {"a.mp4": 1000, "b b.mp4": 2000})
    first = catalog.register(files)
    again = catalog.register(files)
    assert [v.id for v in first] == [v.id for v in again]
    assert [v.fingerprint for v in first] == [v.fingerprint for v in again]
    files[0].path.write_bytes(os.urandom(1500))
    os.utime(files[0].path, (time.time() + 10, time.time() + 10))
    st = files[0].path.stat()
    changed = catalog.register([VideoFile(files[0].path, st.st_size, st.st_mtime), files[1]])
    assert changed[0].id == first[0].id and changed[0].fingerprint != first[0].fingerprint
    assert changed[0].size == 1500 and changed[1].fingerprint == first[1].fingerprint
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Video)) == 2
    catalog.close()


def test_record_done_failed_and_a_later_failure_keeps_live_results(db_url: str, tmp_path: Path) -> None:
    catalog = Catalog(db_url)
    run = catalog.ensure_run(*RUN_A)
    good, bad = catalog.register(make_files(tmp_path, {"good.mp4": 100, "bad.mp4": 100}))
    catalog.record(VideoOutcome(good.id, "done", codec="h264", width=64, height=48, duration_s=2.0,
                                tracks=tracks(2, "thumbs/a")), run)
    catalog.record(VideoOutcome(bad.id, "failed", error="not a readable video container"), run)
    with catalog.session() as s:
        g, b = s.get(Video, good.id), s.get(Video, bad.id)
        assert g is not None and b is not None
        assert (g.status, g.run_id, g.codec, g.width) == ("indexed", run.id, "h264", 64)
        assert (b.status, b.error) == ("failed", "not a readable video container")
    assert count_tracks(catalog, good.id) == 2 and count_tracks(catalog, bad.id) == 0
    # The good video breaks later (say, a damaged copy): its indexed results stay live, the error is noted.
    catalog.record(VideoOutcome(good.id, "failed", error="truncated"), run)
    with catalog.session() as s:
        g = s.get(Video, good.id)
        assert g is not None and (g.status, g.error) == ("indexed", "truncated")
    assert count_tracks(catalog, good.id) == 2
    catalog.close()


def test_claims_go_largest_first_each_task_once_even_when_drivers_race(db_url: str, tmp_path: Path) -> None:
    catalog = Catalog(db_url)
    run = catalog.ensure_run(*RUN_A)
    videos = catalog.register(make_files(tmp_path, {f"v{i}.mp4": 100 + 10 * i for i in range(12)}))
    job_id, queued, skipped = state.plan_job(catalog, str(tmp_path), run, {}, videos, driver="test")
    assert (queued, skipped) == (12, 0)
    first = state.claim_next(catalog, job_id, "w0")
    assert isinstance(first, Task) and first.size == 210 and first.status == "running" and first.attempts == 1
    claimed: list[int] = [first.id]
    lock = threading.Lock()

    def drain(name: str) -> None:
        other = Catalog(db_url)  # its own connections, as another driver process would have
        while isinstance(task := state.claim_next(other, job_id, name), Task):
            with lock:
                claimed.append(task.id)
        other.close()

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12
    assert state.claim_next(catalog, job_id, "w0") is None
    summary = catalog.job_summary(job_id)
    assert summary.running == 12 and summary.queued == 0
    catalog.close()


def test_a_running_video_stays_with_its_job_while_the_driver_lives_whatever_the_clock(
        db_url: str, tmp_path: Path) -> None:
    """Job A runs every video; job B over the same archive may take one only when A's driver is dead.

    A driver on this host is alive while its process exists, even with a heartbeat two minutes old (the
    wall clock stepped, or its heartbeat thread stalled); not when its process id now names a process that
    started later (reused); one elsewhere, or in another process namespace under this host's name (a
    restarted container), is judged by its heartbeat."""
    catalog = Catalog(db_url)
    run = catalog.ensure_run(*RUN_A)
    videos = catalog.register(make_files(tmp_path, {f"v{size}.mp4": size for size in (500, 400, 300, 200)}))
    me = state.driver_id()
    a, _, _ = state.plan_job(catalog, str(tmp_path), run, {}, videos, driver=me)
    b, _, _ = state.plan_job(catalog, str(tmp_path), run, {}, videos, driver="elsewhere:1")
    assert all(isinstance(state.claim_next(catalog, a, "wa"), Task) for _ in videos)
    child = subprocess.Popen(["sleep", "30"])
    gone = state.driver_id(child.pid)
    child.kill()
    child.wait()
    host, pid, space, start = me.split(":")
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and space and start.isdigit(), me

    def driver_of_a(driver: str, beat_age_s: float) -> str:
        with catalog.session() as s:
            s.execute(update(Job).where(Job.id == a).values(
                driver=driver, heartbeat_at=state.db_clock(s) - dt.timedelta(seconds=beat_age_s)))
        taken = state.claim_next(catalog, b, "wb")
        return Path(taken.path).name if isinstance(taken, Task) else str(taken)

    assert driver_of_a(me, 120) == state.BLOCKED
    assert driver_of_a(gone, 0) == "v500.mp4"  # its process is gone: no need to wait for the heartbeat
    assert driver_of_a(f"{host}:{pid}:{space}:{int(start) + 1}", 0) == "v400.mp4"  # this pid, another process
    other_container = f"{host}:{pid}:{'0' * len(space)}:{start}"
    assert driver_of_a(other_container, 5) == state.BLOCKED  # its process table is not this one's: heartbeat
    assert driver_of_a(other_container, 120) == "v300.mp4"
    assert driver_of_a("elsewhere:2", 5) == state.BLOCKED
    assert driver_of_a("elsewhere:2", 120) == "v200.mp4"
    catalog.close()


def test_a_cancel_does_not_cancel_a_job_that_a_resume_takes_over_meanwhile(db_url: str, tmp_path: Path) -> None:
    """cancel() finds the driver dead; before it writes, a resume takes the job over (another connection).
    The cancel must see that the job changed and ask the new, live driver to stop instead of marking the job
    cancelled under it (and re-queuing its videos)."""
    catalog, other = Catalog(db_url), Catalog(db_url)
    run = catalog.ensure_run(*RUN_A)
    videos = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    job_id, _, _ = state.plan_job(catalog, str(tmp_path), run, {}, videos, driver="dead-host:1")
    with catalog.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=state.db_clock(s) - dt.timedelta(minutes=5)))
    resumed: list[str] = []

    def resume_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not resumed and statement.lstrip().upper().startswith("UPDATE JOBS"):
            resumed.append(state.take_over(other, job_id, "new-host:2").driver or "")

    event.listen(catalog.engine, "before_cursor_execute", resume_first)
    try:
        assert state.cancel(catalog, job_id) == "cancelling"
    finally:
        event.remove(catalog.engine, "before_cursor_execute", resume_first)
    assert resumed == ["new-host:2"]
    job = state.get_job(catalog, job_id)
    assert (job.status, job.driver) == ("cancelling", "new-host:2")
    assert state.heartbeat(other, job_id, "new-host:2") == "cancelling"  # the new driver is asked to stop
    catalog.close()
    other.close()


@pytest.mark.parametrize("driver_clock_s", [-120.0, 120.0], ids=["driver_clock_behind", "driver_clock_ahead"])
def test_hosts_whose_clocks_disagree_agree_on_a_heartbeat_s_age(postgres_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 driver_clock_s: float) -> None:
    """On PostgreSQL beats are written and judged by the server's clock: a driver on a host whose clock is two
    minutes off holds its videos while it beats (behind, its beats looked two minutes old), and loses them as
    soon as it stops (ahead, they looked fresh for two minutes more)."""
    catalog = Catalog(postgres_url)
    run = catalog.ensure_run(*RUN_A)
    videos = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    a, _, _ = state.plan_job(catalog, str(tmp_path), run, {}, videos, driver="host-a:1")
    b, _, _ = state.plan_job(catalog, str(tmp_path), run, {}, videos, driver="host-b:1")
    assert isinstance(state.claim_next(catalog, a, "wa"), Task)
    real = schemas.sql.utcnow
    with monkeypatch.context() as m:  # host a, its clock off, beats once more and stops
        for module in (schemas.sql, state):
            m.setattr(module, "utcnow", lambda: real() + dt.timedelta(seconds=driver_clock_s))
        assert state.heartbeat(catalog, a) == "running"
    assert state.claim_next(catalog, b, "wb") == state.BLOCKED  # host b: a is alive
    time.sleep(1.2)
    assert isinstance(state.claim_next(catalog, b, "wb", stale_after_s=1.0), Task)  # a's beat is 1.2 s old
    catalog.close()


def test_rerun_skips_current_videos_and_a_new_run_requeues_them(db_url: str, tmp_path: Path) -> None:
    catalog = Catalog(db_url)
    run_a = catalog.ensure_run(*RUN_A)
    assert catalog.ensure_run(*RUN_A).id == run_a.id
    videos = catalog.register(make_files(tmp_path, {"a.mp4": 300, "b.mp4": 200, "c.mp4": 100}))
    job_id, queued, _ = state.plan_job(catalog, str(tmp_path), run_a, {}, videos, driver="test")
    assert queued == 3
    while isinstance(task := state.claim_next(catalog, job_id, "w"), Task):
        status = "failed" if task.path.endswith("c.mp4") else "done"
        catalog.record(VideoOutcome(task.video_id, status, error="bad" if status == "failed" else None,
                                    tracks=tracks(1, f"t/{task.video_id}"), frames_decoded=10), run_a, task.id)
    summary = catalog.finish_job(job_id, "done")
    assert (summary.done, summary.failed, summary.frames_decoded) == (2, 1, 30)
    assert summary.failures[0]["path"].endswith("c.mp4") and summary.failures[0]["error"] == "bad"

    videos = catalog.register([VideoFile(Path(v.path), v.size, v.mtime) for v in videos])
    job2, queued2, skipped2 = state.plan_job(catalog, str(tmp_path), run_a, {}, videos, driver="test",
                                             retry_failed=True)
    assert (queued2, skipped2) == (1, 2)  # only the failed one is tried again
    with catalog.session() as s:
        reasons = set(s.scalars(select(Task.error).where(Task.job_id == job2, Task.status == "skipped")))
    assert reasons == {"already indexed with this pipeline, these models and settings"}
    run_b = catalog.ensure_run(*RUN_B)  # a new run: the indexed ones are stale and redone
    _, queued3, skipped3 = state.plan_job(catalog, str(tmp_path), run_b, {}, videos, driver="test",
                                          reprocess_stale=True)
    assert (queued3, skipped3) == (3, 0)
    catalog.close()


def test_a_new_run_supersedes_the_old_tracks_atomically(db_url: str, tmp_path: Path) -> None:
    catalog = Catalog(db_url)
    run_a, run_b = catalog.ensure_run(*RUN_A), catalog.ensure_run(*RUN_B)
    (video,) = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    first = catalog.record(VideoOutcome(video.id, "done", tracks=tracks(3, "old")), run_a)
    assert first.run_keys == [] and first.thumbnails == []
    again = catalog.record(VideoOutcome(video.id, "done", tracks=tracks(3, "old")), run_a)  # same run re-recorded
    assert again.run_keys == [] and count_tracks(catalog, video.id) == 3
    replaced = catalog.record(VideoOutcome(video.id, "done", tracks=tracks(1, "new")), run_b)
    assert replaced.run_keys == [RUN_A[0]]
    assert sorted(replaced.thumbnails) == ["old/0.jpg", "old/1.jpg", "old/2.jpg"]
    with catalog.session() as s:
        rows = s.execute(select(Track.run_id, Track.thumbnail).where(Track.video_id == video.id)).all()
        v = s.get(Video, video.id)
        assert v is not None and v.run_id == run_b.id
    assert rows == [(run_b.id, "new/0.jpg")]
    catalog.close()


def test_a_locked_sqlite_index_is_retried_until_the_lock_goes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="catalog.db")  # retries are logged quietly (shown with -v)
    path = tmp_path / "index.sqlite"
    catalog = Catalog(f"sqlite:///{path}", retry_s=20, lock_wait_s=0.1)
    run = catalog.ensure_run(*RUN_A)
    (video,) = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    other = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    timer = threading.Timer(1.0, other.execute, args=("COMMIT",))
    timer.start()
    started = time.monotonic()
    catalog.record(VideoOutcome(video.id, "done", tracks=tracks(2, "t")), run)
    assert time.monotonic() - started >= 0.9
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert count_tracks(catalog, video.id) == 2
    timer.join()
    other.close()
    catalog.close()


def test_a_sqlite_lock_that_stays_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    catalog = Catalog(f"sqlite:///{path}", retry_s=1.0, lock_wait_s=0.1)
    run = catalog.ensure_run(*RUN_A)
    (video,) = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(IndexError_) as err:
        catalog.record(VideoOutcome(video.id, "done", tracks=tracks(1, "t")), run)
    assert "unavailable (record)" in err.value.message and "database is locked" in err.value.message
    assert "attempts" in err.value.message and err.value.path == f"sqlite:///{path}"
    other.execute("ROLLBACK")
    other.close()
    assert count_tracks(catalog, video.id) == 0  # nothing half-written; the job can be resumed
    catalog.close()


def test_an_unreachable_postgres_server_gives_a_clear_error(tmp_path: Path) -> None:
    """Opening fails at the first refused connection: the retries are for a server that goes away mid-job."""
    pytest.importorskip("psycopg")
    started = time.monotonic()
    url = f"postgresql+psycopg://vidx:secret@/vidx?host={tmp_path}&port=5999"  # no server on that socket
    with pytest.raises(IndexError_) as err:
        Catalog(url, retry_s=30.0)
    assert "cannot connect to the SQL index" in err.value.message
    assert "secret" not in err.value.describe()
    assert time.monotonic() - started < 5


@pytest.mark.postgres
def test_dropped_postgres_connections_are_replaced(postgres_url: str, tmp_path: Path) -> None:
    catalog = Catalog(postgres_url, retry_s=10)
    run = catalog.ensure_run(*RUN_A)
    (video,) = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # a server restart or a failover, as the catalog's connections see it
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = :db AND pid <> pg_backend_pid()"),
                              {"db": make_url(postgres_url).database}).scalar()
    admin.dispose()
    assert killed and killed >= 1
    catalog.record(VideoOutcome(video.id, "done", tracks=tracks(2, "t")), run)
    assert count_tracks(catalog, video.id) == 2
    catalog.close()


def test_pgvector_detection_matches_what_the_server_can_do(db_url: str) -> None:
    catalog = Catalog(db_url)
    status = pgvector_status(catalog.engine)
    if catalog.engine.dialect.name != "postgresql":
        assert status == "absent"
    elif status == "absent":
        with pytest.raises(Exception, match="vector"), catalog.engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION vector"))
    else:
        with catalog.engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        assert pgvector_status(catalog.engine) == "installed"
    catalog.close()


def test_concurrent_drivers_creating_the_same_run_share_it(db_url: str) -> None:
    catalogs = [Catalog(db_url) for _ in range(4)]
    ids: dict[str, set[int]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(catalogs))

    def create(catalog: Catalog) -> None:
        for i in range(15):
            key = f"{i:032d}"
            barrier.wait(10)
            try:
                run = catalog.ensure_run(key, "1", {"m": str(i)}, {})
            except BaseException as exc:
                errors.append(exc)
                continue
            with lock:
                ids.setdefault(key, set()).add(run.id)

    threads = [threading.Thread(target=create, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ids) == 15 and all(len(v) == 1 for v in ids.values())
    for c in catalogs:
        c.close()


def test_a_postgres_lock_is_waited_out_and_one_that_stays_is_a_clear_error(postgres_url: str, tmp_path: Path) -> None:
    catalog = Catalog(postgres_url, retry_s=1.0, lock_wait_s=0.2)
    run = catalog.ensure_run(*RUN_A)
    (video,) = catalog.register(make_files(tmp_path, {"v.mp4": 100}))
    other = create_engine(postgres_url)
    blocker = other.connect()
    blocker.execute(text("LOCK TABLE tracks IN ACCESS EXCLUSIVE MODE"))  # held until this transaction ends
    with pytest.raises(IndexError_) as err:
        catalog.record(VideoOutcome(video.id, "done", tracks=tracks(1, "t")), run)
    assert "unavailable (record)" in err.value.message and "lock timeout" in err.value.message
    catalog.retry_s = 20
    timer = threading.Timer(1.0, blocker.rollback)
    timer.start()
    catalog.record(VideoOutcome(video.id, "done", tracks=tracks(2, "t")), run)  # goes through once it is released
    timer.join()
    assert count_tracks(catalog, video.id) == 2
    blocker.close()
    other.dispose()
    catalog.close()


def test_a_job_rides_out_a_database_lock_taken_while_it_runs(db_url: str, tmp_path: Path, cache_dir: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Another process holds the index's write lock for 2.5 s in the middle of a job: the job waits and finishes."""
    import badfiles  # tests/badfiles.py

    from jobs.runner import JobEvents, LocalExecutor, run_job
    from schemas.config import IndexSettings, RuntimeConfig

    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(4):
        badfiles.write_video(archive / f"v{i}.mp4", seed=i)
    caplog.set_level(logging.INFO, logger="catalog.db")
    catalog = Catalog(db_url, retry_s=30, lock_wait_s=0.2)
    locker = create_engine(db_url)
    held: list[threading.Thread] = []

    def hold_lock() -> None:
        with locker.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN EXCLUSIVE")
            else:
                conn.execute(text("LOCK TABLE tasks, videos, tracks IN ACCESS EXCLUSIVE MODE"))
            time.sleep(2.5)
            conn.rollback()

    def on_video(path: str, outcome: VideoOutcome) -> None:
        if not held:  # after the first video: the rest of the job runs into the lock
            held.append(threading.Thread(target=hold_lock))
            held[0].start()
            time.sleep(0.3)  # the lock is taken before the driver records anything else

    out = tmp_path / "out"
    result = run_job(archive, catalog=catalog, out_uri=str(out), settings=IndexSettings(runtime=RuntimeConfig(
        device="cpu")), executor=LocalExecutor(), cache_dir=cache_dir, events=JobEvents(on_video=on_video))
    held[0].join()
    assert (result.summary.done, result.summary.failed) == (4, 0)
    assert any("SQL index busy or unreachable" in r.getMessage() for r in caplog.records)
    locker.dispose()
    catalog.close()
