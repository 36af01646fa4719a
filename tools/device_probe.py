"""One lease on the GPU machine: engine throughput (ONNX Runtime CUDA and CPU), the FP16 graph used for
TensorRT checked on ONNX Runtime CUDA, and PyNvVideoCodec's API as installed. Results under $OUT.

    python3 tools/device_probe.py VIDEO [VIDEO...]
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
log_lines: list[str] = []


def say(*parts: object) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    log_lines.append(line)


def section(name: str, fn: Callable[[], None]) -> None:
    say(f"== {name}")
    t0 = time.monotonic()
    try:
        fn()
    except Exception:
        say(traceback.format_exc())
    say(f"   ({time.monotonic() - t0:.1f} s)")


def env() -> None:
    say(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
    import onnxruntime as ort

    say("onnxruntime", ort.__version__, ort.get_available_providers())


def bench(device: str, batches: str) -> None:
    from engines.zoo import ModelStore
    from vidx.benchmarks import bench_engines

    res = bench_engines(ModelStore(), device=device, engine="onnxruntime",
                        batches=[int(b) for b in batches.split(",")], seconds=1.5)
    (OUT / f"bench_engines_{device}.json").write_text(json.dumps(res, indent=1))
    for r in res["rows"]:
        say(f"   {r['model']:16s} {r['runtime'][:40]:40s} b={r['batch']:4d} {r['items_per_s']:10,.0f}/s "
            f"{r['ms_per_batch']:8.2f} ms")


def fp16() -> None:
    import onnx

    from engines.convert.fp16 import to_float16
    from engines.runtime.onnxruntime import OnnxRuntimeSession
    from engines.zoo import ModelFile, ModelStore

    store = ModelStore()
    rng = np.random.default_rng(0)
    for name in ("face_detector", "person_detector", "face_embedder"):
        model = store.load(name)
        half = to_float16(onnx.load(str(model.path)))
        tmp = Path(tempfile.mkdtemp()) / f"{name}_fp16.onnx"
        onnx.save(half, str(tmp))
        half_model = ModelFile(model.spec, tmp, model.provenance)
        s32 = OnnxRuntimeSession(model, device="cuda")
        s16 = OnnxRuntimeSession(half_model, device="cuda")
        import cupy as cp

        size = model.spec.input_size
        x = cp.asarray(rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8))
        inp = {model.spec.input_name: x}
        a = {k: v.get() for k, v in s32.run(inp).items()}
        b = {k: v.get() for k, v in s16.run(inp).items()}
        for k in a:
            rel = float(np.linalg.norm(a[k] - b[k])) / max(float(np.linalg.norm(a[k])), 1e-9)
            say(f"   {name} {k}: fp16 vs fp32 rel err {rel:.2e}, max abs {np.abs(a[k] - b[k]).max():.3e}")
        for label, sess in (("fp32", s32), ("fp16", s16)):
            times = []
            for i in range(30):
                t0 = time.perf_counter()
                sess.run(inp)
                sess.stream.synchronize()
                if i >= 5:
                    times.append(time.perf_counter() - t0)
            say(f"   {name} {label} batch 64: {64 / statistics.median(times):,.0f}/s")


def nvdec(videos: list[str]) -> None:
    import PyNvVideoCodec as nvc

    say("PyNvVideoCodec", getattr(nvc, "__version__", "?"), "cuda", getattr(nvc, "__cuda_version__", "?"))
    names = [n for n in dir(nvc) if not n.startswith("_")]
    say("   module:", names)
    api = {}
    for n in names:
        obj = getattr(nvc, n)
        doc = (inspect.getdoc(obj) or "")[:1500]
        members = [m for m in dir(obj) if not m.startswith("_")] if inspect.isclass(obj) else []
        api[n] = {"doc": doc, "members": members}
        with contextlib.suppress(TypeError, ValueError):
            api[n]["signature"] = str(inspect.signature(obj))
    (OUT / "pynvvideocodec_api.json").write_text(json.dumps(api, indent=1))
    import cupy as cp

    for video in videos:
        say("   video", video)
        try:
            dec = nvc.SimpleDecoder(video, gpu_id=0, use_device_memory=True,
                                    output_color_type=nvc.OutputColorType.RGB)
            say("   SimpleDecoder ok; len", len(dec), "meta", dec.get_stream_metadata())
            frames = dec.get_batch_frames(8)
            f = frames[0]
            say("   frame type", type(f).__name__, [m for m in dir(f) if not m.startswith("_")])
            cai = f.__cuda_array_interface__
            say("   cai", {k: cai[k] for k in cai if k != "data"})
            arr = cp.asarray(f) if isinstance(cai.get("shape"), tuple) else None
            say("   cupy view", None if arr is None else (arr.shape, arr.dtype))
            for attr in ("timestamp", "pts", "getPTS", "decode_index"):
                if hasattr(f, attr):
                    v = getattr(f, attr)
                    say("   ", attr, v() if callable(v) else v)
        except Exception:
            say(traceback.format_exc())
        try:
            t0 = time.perf_counter()
            dmx = nvc.CreateDemuxer(filename=video)
            dec2 = nvc.CreateDecoder(gpuid=0, codec=dmx.GetNvCodecId(), cudacontext=0, cudastream=0,
                                     usedevicememory=True)
            n_frames = 0
            pts = []
            for packet in dmx:
                for frame in dec2.Decode(packet):
                    n_frames += 1
                    pts.append(getattr(frame, "timestamp", None))
            say(f"   core decoder: {n_frames} frames in {time.perf_counter() - t0:.3f}s; first pts {pts[:5]}")
            say("   frame members", [m for m in dir(frame) if not m.startswith("_")])
            say("   demuxer members", [m for m in dir(dmx) if not m.startswith("_")])
        except Exception:
            say(traceback.format_exc())


if __name__ == "__main__":
    videos = sys.argv[1:]
    section("environment", env)
    section("bench engines cuda", lambda: bench("gpu", "1,8,32,64,128,256"))
    section("bench engines cpu", lambda: bench("cpu", "1,8,32"))
    section("fp16 graph on ORT CUDA", fp16)
    section("pynvvideocodec", lambda: nvdec(videos))
    (OUT / "probe.log").write_text("\n".join(log_lines))
