"""`vidx bench jobs`: the cost of running a job on Ray against the in-process pipeline, on the same videos.

Also makes the archive it uses: short H.264 clips of a real photo moving over noise, each a few
seconds long (the jobs tests use the same clips).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catalog.db import Catalog, default_db_url
from jobs.runner import LocalExecutor, run_job
from schemas.config import IndexSettings, RuntimeConfig

PHOTOS = ("obama", "biden", "astronaut", "obama2")


def make_clip(path: Path, photo: np.ndarray, *, seconds: float, fps: int = 12, size: tuple[int, int] = (480, 272),
              seed: int = 0) -> None:
    """Encode one short H.264 clip: the photo, scaled to 60% of the frame height, drifting over grey noise."""
    import av
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    ph = int(h * 0.6)
    pw = int(photo.shape[1] * ph / photo.shape[0])
    chip = np.asarray(Image.fromarray(photo).resize((pw, ph)))
    background = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
    n = max(1, round(seconds * fps))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for i in range(n):
            frame = background.copy()
            x = int((w - pw) * (0.5 + 0.4 * np.sin(i / max(n, 1) * np.pi)) / 1.0) % max(1, w - pw)
            y = (h - ph) // 2
            frame[y:y + ph, x:x + pw] = chip
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_short_archive(root: Path, photos: dict[str, np.ndarray], n: int, *,
                       seconds: Sequence[float] = (1.0, 1.5, 2.0, 2.5)) -> list[Path]:
    """`n` short clips under `root` (durations cycle through `seconds`, photos through PHOTOS)."""
    root.mkdir(parents=True, exist_ok=True)
    names = [p for p in PHOTOS if p in photos] or list(photos)
    out = []
    for i in range(n):
        path = root / f"clip_{i:03d}.mp4"
        make_clip(path, photos[names[i % len(names)]], seconds=seconds[i % len(seconds)], seed=i)
        out.append(path)
    return out


def _cpuinfo(field: str) -> str | None:
    """The first value of a /proc/cpuinfo field (Linux), None where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.split(":", 1)[0].strip() == field),
                        None)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for benchmark records."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
"""The x86 instruction sets that move the CPU models' speed (INT8 most: VNNI), recorded when present."""


def cpu_vector_extensions() -> list[str]:
    """Which of VECTOR_EXTENSIONS the CPU has (from /proc/cpuinfo's flags; empty elsewhere)."""
    flags = (_cpuinfo("flags") or "").split()
    return [f for f in VECTOR_EXTENSIONS if f in flags]


def machine() -> dict[str, Any]:
    """The host a benchmark ran on, for its record: CPU model, logical cores, memory, Python, OS. Every
    `vidx bench` records this (the model benchmarks add the runtimes and the GPU)."""
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu_model(), "cpu_extensions": cpu_vector_extensions(), "cores": os.cpu_count(),
            "memory_gib": round(memory, 1),
            "python": platform.python_version(), "os": platform.platform()}


def bench_jobs(cache_dir: Path | None, *, videos: int = 20, workers: int | None = None, command: str = "",
               keep: Path | None = None) -> dict[str, Any]:
    """Time `run_job` in-process (LocalExecutor) and on a local Ray instance (RayExecutor) over the same clips.

    Ray is started before the clock runs ("once Ray is up"); each run starts its workers (engine load
    and warm-up) inside its timing, on a fresh SQL index and output folder, CPU only.
    """
    import ray

    from engines.photos import load_photo
    from jobs.ray_executor import RayExecutor, RayOptions

    work = Path(tempfile.mkdtemp(prefix="vidx-bench-jobs-", dir=keep))
    try:
        photos = {n: load_photo(n, cache_dir) for n in PHOTOS}
        make_short_archive(work / "archive", photos, videos)
        settings = IndexSettings(runtime=RuntimeConfig(device="cpu"))
        rows: dict[str, Any] = {}

        def timed(name: str, executor: Any) -> None:
            out = work / f"out-{name}"
            catalog = Catalog(default_db_url(out))
            started = time.perf_counter()
            result = run_job(work / "archive", catalog=catalog, out_uri=str(out), settings=settings,
                             executor=executor, cache_dir=cache_dir)
            wall = time.perf_counter() - started
            catalog.engine.dispose()
            rows[name] = {"wall_s": round(wall, 3), "done": result.summary.done,
                          "failed": result.summary.failed, "frames": result.summary.frames_decoded,
                          "workers": result.workers}

        timed("local", LocalExecutor())
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, namespace="vidx")
        ray_start = time.perf_counter() - t0
        try:
            timed("ray", RayExecutor(RayOptions(gpu=False, workers=workers)))
        finally:
            ray.shutdown()
        ratio = rows["ray"]["wall_s"] / rows["local"]["wall_s"]
        return {"benchmark": "jobs", "command": command, "machine": machine(), "videos": videos,
                "ray_start_s": round(ray_start, 3), "local": rows["local"], "ray": rows["ray"],
                "ray_over_local": round(ratio, 3), "target": 1.2, "meets_target": ratio <= 1.2}
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
