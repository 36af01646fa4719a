"""Video benchmarks: `vidx bench pipeline` (the CPU path against FFmpeg's decode) and `vidx bench gpu`
(NVDEC decode-only against the full GPU pipeline at several sampling modes, and the CPU pipeline).

Both use the `bench` preset of the sample archive: 1080p30 H.264 and HEVC clips made from the real
photos, built once into a work folder and reused. Every row says what was measured and how much.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.engines import machine_info
from engines.loader import Engines, gpu_detector_batch, load_engines
from engines.photos import load_photo
from engines.zoo import ModelStore
from indexer.decode.base import Decoder, open_decoder
from indexer.pipeline import VideoIndexer, VideoTask
from samples.archive import SampleVideo, build_sample_archive
from schemas.config import (
    NVDEC_VIDEOS_IN_FLIGHT,
    DetectionConfig,
    EngineStart,
    IndexSettings,
    RuntimeConfig,
    SamplingConfig,
    SamplingMode,
)
from schemas.errors import VidxError

log = logging.getLogger(__name__)
PHOTOS = ("obama", "biden", "t1", "astronaut")
KEYFRAME_PASSES = 5
"""`vidx bench gpu` indexes the files this many times in its key-frame row (the other rows: once)."""


def bench_clips(work_dir: Path, cache_dir: Path | None, say: Callable[[str], None]) -> list[SampleVideo]:
    """The bench preset's clips, built on first use (in parallel) and reused afterwards."""
    from samples.archive import plan_archive, read_truth, write_truth

    work_dir.mkdir(parents=True, exist_ok=True)
    truth = work_dir / "truth.json"
    names = [p.name for p in plan_archive("bench")]
    if truth.exists() and all((work_dir / n).exists() for n in names):
        return read_truth(truth)
    say(f"building {len(names)} 1080p30 benchmark clips in {work_dir} (once)")
    photos = {n: load_photo(n, cache_dir) for n in PHOTOS}
    videos = build_sample_archive(work_dir, photos, preset="bench", processes=os.cpu_count() or 1)
    write_truth(videos, truth)
    return videos


def repeated_clips(work_dir: Path, codec: str, copies: int) -> list[Path]:
    """`copies` paths cycling through the bench clips of one codec in work_dir (built by bench_clips)."""
    files = sorted(work_dir.glob(f"bench_{codec}_*.mp4"))
    return [files[i % len(files)] for i in range(copies)]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pipeline(indexer: VideoIndexer, paths: list[Path], in_flight: int) -> dict[str, Any]:
    """Index the files (each counted as a separate video) and report frames per second: `video_fps` counts the
    videos' frames (what decode-only rows count), `decoded_fps` the frames the decoders actually produced
    (fewer when frames no sample needs were skipped)."""
    tasks = [VideoTask(p, i + 1, "bench") for i, p in enumerate(paths)]
    before = dict(indexer.timings)
    t0 = time.perf_counter()
    decoded = in_video = analysed = faces = 0
    video_s = 0.0
    failed = []
    for task, result in indexer.index_many(tasks, in_flight=in_flight):
        if isinstance(result, BaseException):
            failed.append(f"{task.path.name}: {result}")
            continue
        decoded += result.frames_decoded
        in_video += result.frames_in_video
        analysed += result.frames_analysed
        faces += result.faces.num_rows
        video_s += result.info.duration_s or 0.0
    wall = time.perf_counter() - t0
    return {"videos": len(paths), "in_flight": in_flight, "wall_s": round(wall, 3), "frames_in_video": in_video,
            "frames_decoded": decoded, "frames_analysed": analysed, "faces": faces,
            "video_fps": round(in_video / wall, 1), "decoded_fps": round(decoded / wall, 1),
            "video_s_per_s": round(video_s / wall, 2), "failed": failed,
            "stage_s": {k: round(v - before[k], 2) for k, v in indexer.timings.items()}}


def every_video_done(row: dict[str, Any], what: str) -> dict[str, Any]:
    """The row of `run_pipeline` or `decode_only`, if no video failed in it: a rate over some of the videos would
    be compared with rates over all of them."""
    failed = row.get("failed") or row.get("errors") or []
    if failed:
        raise VidxError(f"{what}: {len(failed)} of {row['videos']} videos failed, the first: {failed[0]}",
                        hint="a benchmark row counts every video; fix what failed and run it again")
    return row


def decode_only(paths: list[Path], decoders: int, decode_one: Callable[[Path], int]) -> dict[str, Any]:
    """Decode the files with `decoders` threads taking files from a shared list; frames per second."""
    todo = list(paths)
    lock = threading.Lock()
    frames = [0]
    errors: list[str] = []

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop(0)
            try:
                n = decode_one(path)
            except Exception as exc:  # reported in the row, not hidden
                errors.append(f"{path.name}: {exc}")
                continue
            with lock:
                frames[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(decoders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"decoders": decoders, "videos": len(paths), "wall_s": round(wall, 3), "frames": frames[0],
            "fps": round(frames[0] / wall, 1), "errors": errors}


def ffmpeg_null(paths: list[Path], threads: int = 0) -> dict[str, Any] | None:
    """`ffmpeg -f null` over the files one after another (FFmpeg's own threading), or None without ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    t0 = time.perf_counter()
    for p in paths:
        subprocess.run([exe, "-v", "error", "-threads", str(threads), "-i", str(p), "-map", "0:v:0", "-f", "null", "-"],
                       check=True)
    return {"wall_s": round(time.perf_counter() - t0, 3)}


def _indexer(settings: IndexSettings, store: ModelStore, decoder: Decoder | None = None) -> VideoIndexer:
    engines = load_engines(settings.detection, settings.runtime, store=store, sampling_mode=settings.sampling.mode)
    return VideoIndexer(engines, settings, decoder or open_decoder(settings.runtime.device))


def bench_pipeline(cache_dir: Path | None, work_dir: Path, *, codec: str = "h264", command: str,
                   say: Callable[[str], None], detection: DetectionConfig | None = None,
                   engine: str = "auto") -> dict[str, Any]:
    """The CPU pipeline at the default sampling on 1080p30 clips, against `ffmpeg -f null` on the same files
    (`detection`: the detection settings, default DetectionConfig(); `engine`: RuntimeConfig.engine)."""
    detection = detection or DetectionConfig()
    videos = [v for v in bench_clips(work_dir, cache_dir, say) if v.codec == codec]
    clips = [Path(v.path) for v in videos]
    duration = sum(v.duration_s for v in videos)
    store = ModelStore(cache_dir)
    rows: dict[str, Any] = {}
    say("ffmpeg -f null (decode only)")
    rows["ffmpeg_null"] = ffmpeg_null(clips)
    for in_flight in (1, 2):
        settings = IndexSettings(detection=detection, runtime=RuntimeConfig(device="cpu", videos_in_flight=in_flight,
                                                                            engine=engine))  # type: ignore[arg-type]
        say(f"CPU pipeline, {in_flight} video(s) in flight")
        row = every_video_done(run_pipeline(_indexer(settings, store), clips, in_flight),
                               f"CPU pipeline, {in_flight} video(s) in flight")
        row["x_realtime"] = round(duration / row["wall_s"], 2)
        if rows["ffmpeg_null"]:
            row["x_ffmpeg_time"] = round(row["wall_s"] / rows["ffmpeg_null"]["wall_s"], 2)
        rows[f"pipeline_in_flight_{in_flight}"] = row
    return {"benchmark": "pipeline", "machine": machine_info(), "command": command, "codec": codec,
            "face_search": detection.face_search, "engine": engine, "clips": [c.name for c in clips],
            "video_seconds": duration, "rows": rows}


def _prefixed(say: Callable[[str], None], prefix: str, line: str) -> None:
    say(f"{prefix}: {line}")


class GpuEngineSets:
    """GPU engines for each sampling mode as a worker loads them for its job's sampling (the frames per detector run
    follow the sampling, engines.loader.detector_batch_for): one set per distinct batch, loaded and warmed up on
    first use and kept for the modes that share it."""

    def __init__(self, detection: DetectionConfig, runtime: RuntimeConfig, store: ModelStore,
                 say: Callable[[str], None]):
        self.detection, self.runtime, self.store, self.say = detection, runtime, store, say
        self.by_batch: dict[int, Engines] = {}
        self.load_s: dict[int, float] = {}

    def __call__(self, mode: SamplingMode) -> Engines:
        batch = gpu_detector_batch(mode, requested=self.runtime.detector_batch)
        if batch not in self.by_batch:
            t0 = time.perf_counter()
            self.by_batch[batch] = load_engines(self.detection, self.runtime, store=self.store, sampling_mode=mode)
            self.load_s[batch] = round(time.perf_counter() - t0, 1)
            self.say(f"GPU engines for {batch} frames a step loaded and warmed up in {self.load_s[batch]} s")
        return self.by_batch[batch]

    def describe(self) -> dict[str, Any]:
        """Per batch: load and warm-up seconds, sessions, CUDA graph shapes, shape sessions."""
        return {str(batch): {"load_and_warm_up_s": self.load_s[batch], "sessions": e.describe(),
                             "cuda_graph_shapes": e.cuda_graph_shapes(), "shape_sessions": e.shape_sessions()}
                for batch, e in self.by_batch.items()}


def gpu_pipeline_rows(engines: Engines | GpuEngineSets, runtime: RuntimeConfig, paths: list[Path], in_flight: int,
                      say: Callable[[str], None], *, skip_unsampled: bool = True,
                      modes: tuple[SamplingMode, ...] = ("fps", "every-frame", "keyframes"),
                      detection: DetectionConfig | None = None) -> dict[str, dict[str, Any]]:
    """The GPU pipeline over `paths` at each sampling mode of `modes`, `in_flight` videos at once, on engines
    loaded once (with `detection`, the settings they were loaded with; GpuEngineSets: each mode's own): one
    run_pipeline row per mode, after a one-video warm-up run of it. `skip_unsampled` False makes NVDEC decode every
    frame at the default sampling (for A/B runs)."""
    from indexer.decode.nvdec import NvdecDecoder

    rows: dict[str, dict[str, Any]] = {}
    for mode in modes:
        settings = IndexSettings(sampling=SamplingConfig(mode=mode), detection=detection or DetectionConfig(),
                                 runtime=replace(runtime, videos_in_flight=in_flight))
        mode_engines = engines(mode) if isinstance(engines, GpuEngineSets) else engines
        indexer = VideoIndexer(mode_engines, settings, NvdecDecoder(skip_unsampled=skip_unsampled))
        run_pipeline(indexer, paths[:1], 1)  # warm-up: this sampling's first steps, NVDEC decoders
        # Key frames only: the files pass KEYFRAME_PASSES times, or the row lasts well under a second
        # (10 key frames per 20 s clip) and measures mostly the run's start and end.
        todo = paths * (KEYFRAME_PASSES if mode == "keyframes" else 1)
        say(f"GPU pipeline, sampling {mode}, {in_flight} videos in flight, {len(todo)} videos")
        rows[mode] = run_pipeline(indexer, todo, in_flight)
    return rows


def bench_gpu(cache_dir: Path | None, work_dir: Path, *, decoders: list[int], copies: int, command: str,
              cpu_videos: int, say: Callable[[str], None], in_flight: int = NVDEC_VIDEOS_IN_FLIGHT,
              codecs: tuple[str, ...] = ("h264", "hevc"),
              detection: DetectionConfig | None = None, engine_start: EngineStart = "wait") -> dict[str, Any]:
    """Decode-only vs the full GPU pipeline (default sampling, every frame, key frames) vs the CPU pipeline
    (`detection`: the detection settings of both pipelines, default DetectionConfig(); `engine_start`: the GPU
    engines' RuntimeConfig.engine_start: with `background` the rows start while faster sessions are set up;
    `in_flight`: videos in flight in the pipeline rows, as a GPU worker decodes them by default; 0: as many as the
    best decode-only row had decoders)."""
    detection = detection or DetectionConfig()
    import cupy as cp

    from indexer.decode.nvdec import DECODERS, decode_frames_only

    clips = bench_clips(work_dir, cache_dir, say)
    store = ModelStore(cache_dir)
    rss_start = rss_mib()
    out: dict[str, Any] = {"benchmark": "gpu", "machine": machine_info(), "command": command,
                           "face_search": detection.face_search, "engine_start": engine_start, "codecs": {}}
    pool = cp.get_default_memory_pool()
    # The GPU engines for each batch of frames a step, loaded before the timed rows: a GPU worker's warm-up (ONNX
    # Runtime's per-shape cuDNN set-up, ~30-50 s at 1080p, ~3 s for the quick sessions) is paid once per set, as a
    # worker pays it once for all the videos of its job.
    gpu_runtime = RuntimeConfig(device="gpu", engine_start=engine_start)
    engines = GpuEngineSets(detection, gpu_runtime, store, say)
    for mode in ("fps", "every-frame"):  # before the timed rows
        engines(mode)
    for codec in codecs:
        files = [Path(v.path) for v in clips if v.codec == codec]
        seconds_each = clips[0].duration_s
        paths = [files[i % len(files)] for i in range(copies)]
        res: dict[str, Any] = {"videos": len(paths), "video_seconds": seconds_each * len(paths)}
        res["decode_only"] = []
        for n in decoders:
            say(f"{codec}: decode only, {n} decoders")
            res["decode_only"].append(every_video_done(decode_only(paths, n, decode_frames_only),
                                                       f"{codec}: decode only"))
            say(f"   {res['decode_only'][-1]}")
        best = max(res["decode_only"], key=lambda r: r["fps"])
        for mode, row in gpu_pipeline_rows(engines, gpu_runtime, paths, in_flight or best["decoders"],
                                           partial(_prefixed, say, codec),
                                           detection=detection).items():
            every_video_done(row, f"{codec}: GPU pipeline, sampling {mode}")
            row["x_decode_only"] = round(row["video_fps"] / best["fps"], 3)
            res[f"pipeline_{mode}"] = row
            say(f"   {row}")
        res["keyframes_x_default_video_s"] = round(res["pipeline_keyframes"]["video_s_per_s"]
                                                   / res["pipeline_fps"]["video_s_per_s"], 2)
        cpu_settings = IndexSettings(detection=detection,
                                     runtime=RuntimeConfig(device="cpu", videos_in_flight=cpu_videos))
        say(f"{codec}: CPU pipeline (PyAV + ONNX Runtime CPU), {cpu_videos} videos in flight")
        cpu_row = every_video_done(run_pipeline(_indexer(cpu_settings, store, open_decoder("cpu")), paths[:cpu_videos],
                                                cpu_videos), f"{codec}: CPU pipeline")
        res["pipeline_cpu"] = cpu_row
        say(f"   {cpu_row}")
        res["gpu_x_cpu_video_s"] = round(res["pipeline_fps"]["video_s_per_s"] / cpu_row["video_s_per_s"], 2)
        out["codecs"][codec] = res
    out["gpu_engines_by_frames_a_step"] = engines.describe()
    out["nvdec_decoders"] = {"created": DECODERS.created, "reused": DECODERS.reused}
    out["gpu_memory_pool_peak_gib"] = round(pool.total_bytes() / 2**30, 2)
    out["rss_mib"] = {"start": round(rss_start, 1), "end": round(rss_mib(), 1)}
    try:
        smi = subprocess.run([shutil.which("nvidia-smi") or "nvidia-smi", "--query-gpu=name,driver_version,memory.used",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
        out["nvidia_smi"] = smi
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import PyNvVideoCodec

        out["pynvvideocodec"] = getattr(PyNvVideoCodec, "__version__", "?")
    except ImportError:
        pass
    return out
