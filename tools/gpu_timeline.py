"""What the GPU does while the pipeline analyses every frame: a CUDA timeline (CUPTI, through PyTorch's
profiler) of a few seconds of the every-frame row, summarised.

    python3 tools/gpu_timeline.py WORK_DIR [VIDEOS] [WINDOW_S]   (bench clips in WORK_DIR, built by `vidx bench gpu`)

First the models alone: five synchronised steps of the detectors' batch of frames (64 every frame on a large GPU;
person detector, then guided face search around the people found) with the timeline on, for their kernels' time
per frame. Then VIDEOS copies of the H.264 bench clips (default 28), every frame, one process, the fastest
sessions; the timeline records WINDOW_S seconds (default 6) starting 4 s into the run. Printed: how busy the GPU
was (any kernel or copy running), the kernels' time by kind and by name, how much two streams overlapped, the idle
gaps, the CUDA calls the process made (launches, synchronisations, copies) and the threads it had. The raw traces
(Chrome trace JSON, large) go to the folder TRACE names (default /tmp/vidx-timeline).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import cupy as cp
from torch.profiler import ProfilerActivity, profile  # PyTorch's profiler holds the CUPTI tracer

from bench.video import repeated_clips
from engines.cuda_ops import KERNELS
from engines.loader import load_engines
from engines.streams import STREAMS
from engines.zoo import ModelStore
from indexer.decode.nvdec import NvdecDecoder
from indexer.pipeline import VideoIndexer, VideoTask
from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig

GPU_KINDS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_KINDS = ("cuda_runtime", "cuda_driver")


def kernel_kind(name: str) -> str:
    low = name.lower()
    if any(k == name or name.startswith(k + "(") for k in KERNELS):
        return "vidx kernels (levels, warps, colour, anchors, sharpness)"
    if "cupy_" in low:
        return "cupy elementwise/reductions"
    if any(s in low for s in ("xmma", "cutlass", "conv", "gemm", "cudnn", "sm90", "sm80", "implicit", "winograd",
                              "depthwise", "fprop", "dgrad", "wgrad")):
        return "convolution / matrix (cuDNN, cuBLAS)"
    if any(s in low for s in ("nv12", "nvdec", "yuv", "color", "colour")):
        return "decoder side (colour, surfaces)"
    return "other runtime kernels (elementwise, pooling, transposes, ...)"


def union_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start_us, end_us) intervals."""
    total, end = 0.0, -1.0
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total / 1e6


def covered_by_two(intervals_by_stream: dict[Any, list[tuple[float, float]]]) -> float:
    """Seconds in which kernels of two or more streams ran at once."""
    edges: list[tuple[float, int]] = []
    for spans in intervals_by_stream.values():
        merged: list[list[float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        edges += [(a, 1) for a, _ in merged] + [(b, -1) for _, b in merged]
    edges.sort()
    depth, last, total = 0, 0.0, 0.0
    for t, d in edges:
        if depth >= 2:
            total += t - last
        depth += d
        last = t
    return total / 1e6


def gaps(intervals: list[tuple[float, float]]) -> dict[str, Any]:
    """The idle stretches between GPU work, by length."""
    buckets = {"<10us": [0, 0.0], "10-100us": [0, 0.0], "0.1-1ms": [0, 0.0], ">1ms": [0, 0.0]}
    end = None
    for a, b in sorted(intervals):
        if end is not None and a > end:
            g = a - end
            key = "<10us" if g < 10 else "10-100us" if g < 100 else "0.1-1ms" if g < 1000 else ">1ms"
            buckets[key][0] += 1
            buckets[key][1] += g / 1e6
        end = b if end is None else max(end, b)
    return {k: {"count": n, "s": round(s, 4)} for k, (n, s) in buckets.items()}


def summarise(events: list[dict[str, Any]], window_s: float, frames: int,
              thread_names: dict[int, str]) -> dict[str, Any]:
    gpu = [e for e in events if e.get("cat") in GPU_KINDS and e.get("ph") == "X"]
    host = [e for e in events if e.get("cat") in HOST_KINDS and e.get("ph") == "X"]
    spans: list[tuple[float, float]] = []
    kernel_spans: list[tuple[float, float]] = []
    by_stream: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(list)
    copies: dict[str, float] = defaultdict(float)
    copy_bytes: Counter[str] = Counter()
    for e in gpu:
        args = e.get("args", {})
        span = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        spans.append(span)
        by_stream[args.get("stream", e.get("tid"))].append(span)
        if e["cat"] == "kernel":
            kernel_spans.append(span)
            by_kind[kernel_kind(e["name"])] += float(e["dur"]) / 1e6
            by_name[e["name"][:90]].append(float(e["dur"]))
        else:
            copies[e["name"][:40]] += float(e["dur"]) / 1e6
            copy_bytes[e["name"][:40]] += int(args.get("bytes", 0))
    kernel_s = sum(by_kind.values())
    first = min((a for a, _ in spans), default=0.0)
    last = max((b for _, b in spans), default=0.0)
    span_s = (last - first) / 1e6 if spans else window_s
    stream_busy = {str(stream): union_s(v) for stream, v in by_stream.items()}

    host_s: dict[str, float] = defaultdict(float)
    host_n: Counter[str] = Counter()
    for e in host:  # the whole process's (the trace's thread ids are not the threads' native ids)
        host_s[e["name"]] += float(e["dur"]) / 1e6
        host_n[e["name"]] += 1
    return {
        "window_s": round(span_s, 3), "frames_analysed": frames,
        "frames_per_s_in_window": round(frames / span_s, 1) if span_s else None,
        "gpu_busy": round(union_s(spans) / span_s, 3) if span_s else None,
        "kernels_busy": round(union_s(kernel_spans) / span_s, 3) if span_s else None,
        "two_streams_at_once": round(covered_by_two(by_stream) / span_s, 3) if span_s else None,
        "kernel_s": round(kernel_s, 3),
        "kernel_ms_per_frame": round(1000 * kernel_s / frames, 3) if frames else None,
        "kernels": len(kernel_spans),
        "kernels_per_frame": round(len(kernel_spans) / frames, 1) if frames else None,
        "by_kind_s": {k: round(v, 3) for k, v in most(by_kind)},
        "top_kernels": [{"name": n, "count": len(d), "total_s": round(sum(d) / 1e6, 4),
                         "mean_us": round(sum(d) / len(d), 1)}
                        for n, d in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]],
        "copies_s": {k: round(v, 4) for k, v in most(copies)},
        "copies_mb": {k: round(v / 1e6, 1) for k, v in copy_bytes.most_common()},
        "streams": {stream: round(busy / span_s, 3) for stream, busy in most(stream_busy)[:12]} if span_s else {},
        "idle_gaps": gaps(spans),
        "host_calls": {n: {"calls": host_n[n], "s": round(t, 3)} for n, t in most(host_s)[:12]},
        "threads_seen": Counter(thread_role(n) for n in thread_names.values()),
    }


def most(totals: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(totals.items(), key=lambda kv: -kv[1])


def thread_role(name: str) -> str:
    if name.startswith("vidx-models"):
        return "model threads"
    if name.startswith("vidx-decode"):
        return "decoder threads"
    if name == "MainThread":
        return "calling thread (gather, track)"
    return name or "unnamed"


def thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def trace_events(prof: Any, path: Path) -> list[dict[str, Any]]:
    prof.export_chrome_trace(str(path))
    with open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def models_alone(engines: Any, clip: Path, out_dir: Path) -> dict[str, Any]:
    """Five synchronised steps (the detectors' batch of frames) of the person and face detectors, as a step runs
    them."""
    frames = []
    for batch in NvdecDecoder().batches(clip, SamplingConfig(mode="every-frame"), engines.faces.batch_size):
        frames = [cp.ascontiguousarray(batch.frames[i]) for i in range(0, len(batch.pts_s))]
        break
    faces_engine = engines.faces

    def step() -> None:
        with STREAMS.lend() as stream:
            persons = engines.persons.detect(frames)
            regions = [faces_engine.head_regions(p.boxes, int(frames[0].shape[0]), int(frames[0].shape[1]))
                       for p in persons]
            faces_engine.detect(frames, regions)
            stream.synchronize()

    for _ in range(3):
        step()
    names = thread_names()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
    wall = time.perf_counter() - t0
    summary = summarise(trace_events(prof, out_dir / "models_alone.trace.json"), wall, 5 * len(frames), names)
    summary["wall_ms_per_step"] = round(1000 * wall / 5, 2)
    return summary


def pipeline_window(engines: Any, settings: IndexSettings, paths: list[Path], start_s: float, window_s: float,
                    out_dir: Path) -> dict[str, Any]:
    indexer = VideoIndexer(engines, settings, NvdecDecoder())
    list(indexer.index_many([VideoTask(paths[0], 10_000, "w")]))  # decoders and streams warm
    tasks = [VideoTask(p, i + 1, "t") for i, p in enumerate(paths)]
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    state = {"on": False, "done": False, "frames": 0, "t_on": 0.0, "t_off": 0.0, "total": 0}
    names: dict[int, str] = {}
    t0 = time.perf_counter()

    def progress(_task: VideoTask, n: int, _ts: float) -> None:  # on the calling thread, after each step
        state["total"] += n
        now = time.perf_counter() - t0
        names.update(thread_names())
        if not state["on"] and not state["done"] and now >= start_s:
            prof.start()
            state.update(on=True, t_on=time.perf_counter())
        elif state["on"]:
            state["frames"] += n
            if now >= start_s + window_s:
                prof.stop()
                state.update(on=False, done=True, t_off=time.perf_counter())

    results = list(indexer.index_many(tasks, on_progress=progress))
    run_s = time.perf_counter() - t0
    if state["on"]:
        prof.stop()
        state.update(on=False, done=True, t_off=time.perf_counter())
    summary = summarise(trace_events(prof, out_dir / "pipeline.trace.json"), state["t_off"] - state["t_on"],
                        int(state["frames"]), names)
    # the window's frames are those whose steps were recorded while the profiler was on; if its GPU activity spans
    # less than that time, the trace lost events (CUPTI's buffers) and its per-frame figures are not comparable
    summary.update(profiler_on_s=round(state["t_off"] - state["t_on"], 3), run_s=round(run_s, 2),
                   run_frames=int(state["total"]),
                   run_frames_per_s=round(state["total"] / run_s, 1), videos=len(results),
                   failed=sum(isinstance(r, BaseException) for _, r in results),
                   stage_s={k: round(v, 2) for k, v in indexer.timings.items()})
    return summary


def main() -> None:
    work = Path(sys.argv[1])
    videos = int(sys.argv[2]) if len(sys.argv) > 2 else 28
    window_s = float(sys.argv[3]) if len(sys.argv) > 3 else 6.0
    out_dir = Path(os.environ.get("TRACE", "/tmp/vidx-timeline"))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = IndexSettings(sampling=SamplingConfig(mode="every-frame"),
                             runtime=RuntimeConfig(device="gpu", engine_start="wait"))
    t0 = time.perf_counter()
    engines = load_engines(settings.detection, settings.runtime, store=ModelStore(),
                           sampling_mode=settings.sampling.mode)
    print(json.dumps({"engines_ready_s": round(time.perf_counter() - t0, 1), "engines": engines.describe()}),
          flush=True)
    paths = repeated_clips(work, "h264", videos)
    print(json.dumps({"models_alone": models_alone(engines, paths[0], out_dir)}), flush=True)
    print(json.dumps({"pipeline": pipeline_window(engines, settings, paths, 4.0, window_s, out_dir)}), flush=True)


if __name__ == "__main__":
    main()
