"""Jobs on Ray: GPU workers (logical GPUs), a killed worker, a crashing and a hanging decoder, a killed driver.

One local Ray instance for the module: `ray.init(num_cpus=2, num_gpus=2)`, so two GPU worker actors fit.
The clips are a few seconds of real photos; the models are the real ones, on the CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from badfiles import noise  # tests/badfiles.py
from jobchecks import assert_each_video_indexed_once, tasks_of  # tests/jobchecks.py
from sqlalchemy import func, select

from bench.jobs import PHOTOS, make_clip, make_short_archive
from catalog.db import Catalog, default_db_url
from engines.photos import load_photo
from indexer.host_memory import arena_env
from jobs.ray_executor import RayExecutor, RayOptions
from jobs.runner import JobResult, resume_job, run_job
from jobs.worker import FAULTS_ENV
from schemas.config import IndexSettings, RuntimeConfig
from schemas.sql import Job, Task, Track

SETTINGS = IndexSettings(runtime=RuntimeConfig(device="cpu"))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, namespace="vidx-tests")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clip_photos(cache_dir: Path) -> dict[str, np.ndarray]:
    return {n: load_photo(n, cache_dir) for n in PHOTOS}


def test_two_gpu_workers_share_the_videos_and_a_resubmit_does_nothing(
        ray_local: None, tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", clip_photos, 8)
    out = tmp_path / "out"
    catalog = Catalog(default_db_url(out))
    executor = RayExecutor(RayOptions(workers_per_gpu=1, videos_per_worker=2))
    result = run_job(tmp_path / "a", catalog=catalog, out_uri=str(out), settings=SETTINGS, executor=executor,
                     cache_dir=cache_dir)
    assert result.summary.done == 8 and result.summary.failed == 0
    assert result.workers["workers"] == "2 x gpu (2 videos at once each)"
    assert result.workers["gpus"] in ("0", "1")  # Ray's GPU id of the first worker up
    assert result.workers["malloc_arena_max"] == arena_env()["MALLOC_ARENA_MAX"]  # the worker's, from its start
    tasks = tasks_of(catalog, result.job_id)
    per_worker = Counter((t.worker or "").split("@")[0] for t in tasks)
    assert set(per_worker) == {"gpu0", "gpu1"} and min(per_worker.values()) >= 2, per_worker
    assert all(t.attempts == 1 and t.frames and t.elapsed_s and t.duration_s for t in tasks)
    assert_each_video_indexed_once(catalog, 8)
    with catalog.session() as s:
        assert (s.scalar(select(func.count()).select_from(Track)) or 0) >= 6  # ~one face track per clip
    parts = sorted((out / "faces").glob("*.parquet"))
    assert len(parts) == 8

    again = run_job(tmp_path / "a", catalog=catalog, out_uri=str(out), settings=SETTINGS,
                    executor=RayExecutor(RayOptions(workers_per_gpu=1, videos_per_worker=2)), cache_dir=cache_dir)
    assert (again.summary.done, again.summary.skipped, again.workers) == (0, 8, {})
    assert sorted((out / "faces").glob("*.parquet")) == parts


def test_a_killed_worker_is_replaced_and_every_video_is_indexed_once(
        ray_local: None, tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", clip_photos, 6, seconds=(3.0, 3.5))
    out = tmp_path / "out"
    catalog = Catalog(default_db_url(out))
    executor = RayExecutor(RayOptions(workers=2, videos_per_worker=1, backoff_s=0.1))
    results: list[JobResult] = []
    runner = threading.Thread(target=lambda: results.append(run_job(
        tmp_path / "a", catalog=catalog, out_uri=str(out), settings=SETTINGS, executor=executor,
        cache_dir=cache_dir)))
    runner.start()
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        with catalog.session() as s:
            running = s.scalar(select(Task).where(Task.status == "running").limit(1))
        if running is not None and executor.slots:
            label = (running.worker or "").split("@")[0]
            victim = next((slot.handle for slot in executor.slots if slot.label == label), None)
        time.sleep(0.05)
    assert victim is not None, "no video started running"
    ray.kill(victim, no_restart=True)
    runner.join(300)
    assert results, "the job did not finish"
    summary = results[0].summary
    assert (summary.done, summary.failed) == (6, 0)
    assert executor.replaced >= 1
    assert_each_video_indexed_once(catalog, 6)
    tasks = tasks_of(catalog, results[0].job_id)
    assert max(t.attempts for t in tasks) == 2  # the killed worker's video was tried again, once


def test_a_crashing_and_a_hanging_decoder_take_down_only_their_worker(
        ray_local: None, tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "a"
    make_short_archive(archive, clip_photos, 4)
    make_clip(archive / "segv_me.mp4", clip_photos["biden"], seconds=1.0)
    make_clip(archive / "hang_me.mp4", clip_photos["obama"], seconds=1.0)
    (archive / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + noise(2000))
    monkeypatch.setenv(FAULTS_ENV, "crash=segv_me;hang=hang_me")
    out = tmp_path / "out"
    catalog = Catalog(default_db_url(out))
    executor = RayExecutor(RayOptions(workers_per_gpu=1, videos_per_worker=2, max_attempts=2, stall_timeout_s=6,
                                      backoff_s=0.1))
    result = run_job(archive, catalog=catalog, out_uri=str(out), settings=SETTINGS, executor=executor,
                     cache_dir=cache_dir)
    by_name = {Path(t.path).name: t for t in tasks_of(catalog, result.job_id)}
    assert (result.summary.done, result.summary.failed) == (4, 3)
    crash, hang, corrupt = by_name["segv_me.mp4"], by_name["hang_me.mp4"], by_name["corrupt.mp4"]
    assert crash.status == "failed" and crash.attempts == 2 and "worker process died" in (crash.error or "")
    assert hang.status == "failed" and hang.attempts == 2 and "hung" in (hang.error or "")
    # Its own fault: failed with its own reason, never retried for it. It may have had a second attempt only
    # because it was in flight on a worker that the crash took down (2 videos per worker; seen in CI).
    assert corrupt.status == "failed" and corrupt.attempts in (1, 2), corrupt.attempts
    assert "died" not in (corrupt.error or "") and "hung" not in (corrupt.error or ""), corrupt.error
    assert all(t.status == "done" for n, t in by_name.items() if n.startswith("clip_"))
    assert executor.replaced >= 3  # each attempt at the culprits cost a worker (a crash can take a hang with it)
    assert len(result.summary.workers_replaced) == executor.replaced, result.summary.workers_replaced
    assert any("died" in why for why in result.summary.workers_replaced), result.summary.workers_replaced


def test_killing_the_driver_then_resume_finishes_the_job(
        ray_local: None, tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", clip_photos, 8, seconds=(2.0, 3.0))
    out = tmp_path / "out"
    url = default_db_url(out)
    env = {**os.environ, "VIDX_CACHE_DIR": str(cache_dir)}
    address = ray.get_runtime_context().gcs_address  # this module's instance, not whichever "auto" finds
    driver = subprocess.Popen(
        [sys.executable, "-m", "vidx", "job", "submit", str(tmp_path / "a"), "--out", str(out), "--address", address,
         "--device", "cpu", "--workers", "1", "--videos-per-worker", "1", "--json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    catalog = Catalog(url)
    deadline = time.monotonic() + 180
    done = 0
    try:
        while time.monotonic() < deadline and done < 2:
            assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
            with catalog.session() as s:
                done = s.scalar(select(func.count()).select_from(Task).where(Task.status == "done")) or 0
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert done >= 2
    with catalog.session() as s:
        job = s.scalars(select(Job)).one()
    assert job.status == "running"  # the driver died without a word
    summary_before = catalog.job_summary(job.id)
    assert summary_before.done < 8

    result = resume_job(job.id, catalog=catalog, executor=RayExecutor(RayOptions(workers=1)), cache_dir=cache_dir)
    assert result.summary.status == "done"
    assert (result.summary.done, result.summary.failed) == (8, 0)
    assert_each_video_indexed_once(catalog, 8)
    with catalog.session() as s:
        assert s.scalar(select(Job.status).where(Job.id == job.id)) == "done"


def test_two_workers_can_share_one_gpu(
        ray_local: None, tmp_path: Path, clip_photos: dict[str, np.ndarray], cache_dir: Path) -> None:
    """--workers-per-gpu 2: each actor asks for half a GPU (two processes per GPU run their host work in
    parallel); results are those of whole-GPU workers."""
    make_short_archive(tmp_path / "a", clip_photos, 4)
    out = tmp_path / "out"
    catalog = Catalog(default_db_url(out))
    executor = RayExecutor(RayOptions(workers=2, workers_per_gpu=2, videos_per_worker=2))
    result = run_job(tmp_path / "a", catalog=catalog, out_uri=str(out), settings=SETTINGS, executor=executor,
                     cache_dir=cache_dir)
    assert (result.summary.done, result.summary.failed) == (4, 0)
    assert result.workers["workers"] == "2 x gpu (2 per GPU, 2 videos at once each)"
    assert executor._actor_opts["num_gpus"] == 0.5
    assert result.workers["gpus"] in ("0", "1")
    assert_each_video_indexed_once(catalog, 4)
