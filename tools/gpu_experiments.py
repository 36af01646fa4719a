"""Experiments behind docs/gpu.md: why the GPU pipeline falls short of decode-only. One JSON line per result.

    python3 tools/gpu_experiments.py WORK_DIR decode    # setup costs; decode-only: threads, processes,
                                                        # PyNvVideoCodec's ThreadedDecoder, a GIL-holding thread
    python3 tools/gpu_experiments.py WORK_DIR ceiling   # decode-only over all of WORK_DIR's .mp4, 8-32 threads
    python3 tools/gpu_experiments.py WORK_DIR stages    # the consumer's steps on real 1080p frames, timed apart
    python3 tools/gpu_experiments.py WORK_DIR pipeline  # the pipeline at 2 fps: detector batch, steps in flight,
                                                        # GIL switch interval
    python3 tools/gpu_experiments.py WORK_DIR contention  # one model run's latency beside decoders / a GIL hog

WORK_DIR holds the `vidx bench gpu` clips (bench_h264_*.mp4, bench_hevc_*.mp4).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path
from typing import Any


def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def clips(work: Path, codec: str = "h264", copies: int = 14) -> list[Path]:
    files = sorted(work.glob(f"bench_{codec}_*.mp4"))
    return [files[i % len(files)] for i in range(copies)]


def core_decode(path: Path) -> int:
    from indexer.decode.nvdec import decode_frames_only

    return decode_frames_only(path)


def threaded_decode(path: Path) -> int:
    """PyNvVideoCodec's ThreadedDecoder: a C++ thread decodes ahead; Python fetches batches."""
    import PyNvVideoCodec as nvc

    dec = nvc.ThreadedDecoder(str(path), 64, gpu_id=0, use_device_memory=True)
    n = 0
    while True:
        frames = dec.get_batch_frames(64)
        if not frames:
            break
        n += len(frames)
        for f in frames:
            f.getPTS()
    dec.end()
    return n


def spin(stop: threading.Event) -> None:
    """Pure Python until `stop`: a thread that holds the GIL whenever it can (as a busy Python thread does)."""
    x = 0
    while not stop.is_set():
        for i in range(2000):
            x += i


def run_threads(paths: list[Path], n: int, fn: Any, hog: bool = False) -> dict[str, Any]:
    from vidx.bench_video import decode_only

    stop = threading.Event()
    hogger = threading.Thread(target=spin, args=(stop,), daemon=True)
    if hog:
        hogger.start()
    try:
        return decode_only(paths, n, fn)
    finally:
        stop.set()


def _proc(paths: list[str], barrier: Any, out: Any) -> None:
    import cupy as cp
    import PyNvVideoCodec  # noqa: F401  (import and CUDA context before the clock starts)

    cp.cuda.runtime.free(cp.cuda.runtime.malloc(1))
    barrier.wait()
    t0 = time.monotonic()
    frames = sum(core_decode(Path(p)) for p in paths)
    out.put((t0, time.monotonic(), frames))


def run_processes(paths: list[Path], n: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    shares = [[str(p) for p in paths[i::n]] for i in range(n)]
    procs = [ctx.Process(target=_proc, args=(s, barrier, out)) for s in shares]
    for p in procs:
        p.start()
    res = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[1] for r in res) - min(r[0] for r in res)
    frames = sum(r[2] for r in res)
    return {"processes": n, "videos": len(paths), "wall_s": round(wall, 3), "frames": frames,
            "fps": round(frames / wall, 1)}


def setup_costs(paths: list[Path]) -> None:
    import PyNvVideoCodec as nvc

    from indexer.decode.nvdec import NvdecDecoder
    from indexer.decode.pyav import PyAVDecoder

    dec = NvdecDecoder()
    for p in paths[:3]:
        t = {}
        t0 = time.perf_counter()
        PyAVDecoder().probe(p)
        t["pyav_probe_default_threads"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dec._container(p)
        t["container_one_thread"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        demuxer = nvc.CreateDemuxer(filename=str(p))
        t["create_demuxer"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        nvc.GetDecoderCaps(gpuid=0, codec=demuxer.GetNvCodecId(), chromaformat=demuxer.ChromaFormat(),
                           bitdepth=demuxer.BitDepth())
        t["get_decoder_caps"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dec._supported(demuxer)
        t["supported_cached"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoder = nvc.CreateDecoder(gpuid=0, codec=demuxer.GetNvCodecId(), cudacontext=0, cudastream=0,
                                    usedevicememory=True)
        t["create_decoder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        for packet in demuxer:
            n += len(decoder.Decode(packet))
            if n >= 1:
                break
        t["first_frame"] = time.perf_counter() - t0
        emit(experiment="setup_s", file=p.name, **{k: round(v, 4) for k, v in t.items()})


def decode_experiments(work: Path) -> None:
    for codec in ("h264", "hevc"):
        paths = clips(work, codec)
        setup_costs(paths)
        core_decode(paths[0])  # warm
        for n in (1, 7, 14):
            emit(experiment="decode_threads", codec=codec, **run_threads(paths, n, core_decode))
        for n in (7, 14):
            emit(experiment="decode_processes", codec=codec, **run_processes(paths, n))
        for n in (7, 14):
            try:
                emit(experiment="decode_threaded_decoder", codec=codec, **run_threads(paths, n, threaded_decode))
            except Exception as exc:
                emit(experiment="decode_threaded_decoder", codec=codec, error=repr(exc))
        for interval in (0.005, 0.0005):
            sys.setswitchinterval(interval)
            emit(experiment="decode_threads_with_gil_hog", codec=codec, switch_interval=interval,
                 **run_threads(paths, 7, core_decode, hog=True))
        sys.setswitchinterval(0.005)


def gpu_engines_and_frames(work: Path) -> tuple[Any, list[Any]]:
    """FP32 engines on ONNX Runtime CUDA and the first 32 sampled frames (on the GPU) of the first clip."""
    from engines.loader import load_engines
    from engines.zoo import ModelStore
    from indexer.decode.nvdec import NvdecDecoder
    from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig

    settings = IndexSettings(runtime=RuntimeConfig(device="gpu", engine="onnxruntime"))
    engines = load_engines(settings.detection, settings.runtime, store=ModelStore())
    batch = next(NvdecDecoder().batches(clips(work)[0], SamplingConfig(mode="fps"), 32))
    return engines, [batch.frames[i] for i in range(len(batch))]


def ceiling_experiments(work: Path) -> None:
    """Decode-only over every H.264 file in WORK_DIR (e.g. the tools/gpu_scaling.py archive), 8 to 32 threads:
    the ceiling the pipeline is compared with."""
    paths = sorted(work.glob("*.mp4"))
    core_decode(paths[0])  # warm
    for n in (8, 16, 24, 32):
        emit(experiment="decode_ceiling", **run_threads(paths, n, core_decode))


def stage_experiments(work: Path) -> None:
    import cupy as cp

    engines, frames = gpu_engines_and_frames(work)
    sync = cp.cuda.Device().synchronize

    def timed(name: str, fn: Any, reps: int = 10, **extra: Any) -> Any:
        out = fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        sync()
        emit(experiment="stage_ms", step=name, ms=round(1000 * (time.perf_counter() - t0) / reps, 3), **extra)
        return out

    faces = engines.faces
    levels = faces.plan(*frames[0].shape[:2])
    emit(experiment="stage_info", frames=len(frames), frame_shape=frames[0].shape,
         levels=[(lv.scale, lv.canvas_h, lv.canvas_w) for lv in levels])
    dets = timed("faces.detect(32 frames)", lambda: faces.detect(frames))
    xp = cp
    timed("faces: level kernels (32 frames)", lambda: list(faces._level_batches(xp, frames, levels)))
    for level, batch in zip(levels, faces._level_batches(xp, frames, levels), strict=True):
        timed(f"faces: session.run (32 frames at {level.canvas_h}x{level.canvas_w})",
              lambda b=batch: faces.session.run({"image": b}))  # type: ignore[misc]
        timed(f"faces: _run = run + decode + to host ({level.canvas_h}x{level.canvas_w})",
              lambda b=batch, lv=level: faces._run(b, lv))  # type: ignore[misc]
    if engines.persons is not None:
        timed("persons.detect(32 frames)", lambda: engines.persons.detect(frames))  # type: ignore[union-attr]
    import numpy as np

    pairs = [(f, k) for f, d in enumerate(dets) for k in range(len(d))]
    emit(experiment="stage_info", faces_found=len(pairs))
    if pairs:
        kps = np.stack([dets[f].keypoints[k] for f, k in pairs])
        idx = [f for f, _ in pairs]
        chips = timed("embedder.chips", lambda: engines.embedder.chips(frames, idx, kps), faces=len(pairs))
        timed("embedder.embed_chips", lambda: engines.embedder.embed_chips(chips), faces=len(pairs))
        from engines.imageops import laplacian_variance

        timed("laplacian_variance", lambda: laplacian_variance(chips), faces=len(pairs))


def pipeline_experiments(work: Path) -> None:
    """The pipeline at 2 fps on 14 H.264 clips: detector batch, steps in flight and GIL switch interval apart."""
    import indexer.pipeline as pipeline
    from engines.loader import load_engines
    from engines.zoo import ModelStore
    from indexer.decode.nvdec import NvdecDecoder
    from schemas.config import IndexSettings, RuntimeConfig
    from vidx.bench_video import run_pipeline

    paths = clips(work)
    for batch in (16, 32):  # frames per detector run (one pyramid level each)
        settings = IndexSettings(runtime=RuntimeConfig(device="gpu", engine="onnxruntime", detector_batch=batch,
                                                       videos_in_flight=14))
        indexer = pipeline.VideoIndexer(load_engines(settings.detection, settings.runtime, store=ModelStore()),
                                        settings, NvdecDecoder())
        run_pipeline(indexer, paths[:1], 1)
        for steps, interval in ((1, 0.005), (2, 0.005), (2, 0.0005)):
            if batch == 64 and steps == 2 and interval != 0.005:
                continue
            pipeline.STEPS_IN_FLIGHT_GPU = steps
            sys.setswitchinterval(interval)
            emit(experiment="pipeline_fps", detector_batch=batch, steps_in_flight=steps, switch_interval=interval,
                 **run_pipeline(indexer, paths, 14))
    sys.setswitchinterval(0.005)


def contention_experiments(work: Path) -> None:
    """Latency of one detector run and one embedder run: idle, while decoders run, while a thread holds the GIL."""
    import cupy as cp
    import numpy as np

    engines, frames = gpu_engines_and_frames(work)
    level = engines.faces.plan(*frames[0].shape[:2])[0]
    finest = next(iter(engines.faces._level_batches(cp, frames, [level])))
    chips = cp.asarray(np.random.default_rng(0).integers(0, 255, (64, 150, 150, 3), dtype=np.uint8))
    paths = clips(work)

    def background(kind: str, stop: threading.Event) -> list[threading.Thread]:
        def decode_loop(i: int) -> None:
            while not stop.is_set():
                (threaded_decode if kind == "threaded" else core_decode)(paths[i % len(paths)])

        if kind == "gil_hog":
            threads = [threading.Thread(target=spin, args=(stop,), daemon=True)]
        elif kind == "idle":
            threads = []
        else:
            threads = [threading.Thread(target=decode_loop, args=(i,), daemon=True) for i in range(14)]
        for t in threads:
            t.start()
        return threads

    for kind in ("idle", "core_decoders", "threaded_decoders", "gil_hog"):
        stop = threading.Event()
        threads = background(kind.replace("_decoders", ""), stop)
        time.sleep(1.0)
        for name, fn in (("faces._run(32 frames, finest level)", lambda: engines.faces._run(finest, level)),
                         ("embed_chips(64)", lambda: engines.embedder.embed_chips(chips))):
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            emit(experiment="contention_ms", background=kind, call=name,
                 median=round(1000 * float(np.median(times)), 2), p90=round(1000 * float(np.percentile(times, 90)), 2))
        stop.set()
        for t in threads:
            t.join()


if __name__ == "__main__":
    work_dir, what = Path(sys.argv[1]), sys.argv[2]
    experiments = {"decode": decode_experiments, "ceiling": ceiling_experiments, "stages": stage_experiments,
                   "pipeline": pipeline_experiments, "contention": contention_experiments}
    experiments[what](work_dir)
