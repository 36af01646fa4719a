"""Benchmarks behind `vidx bench ...`: each returns a dict with the machine, the command and rows."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from bench.jobs import machine
from engines.arrays import cupy_module
from engines.runtime.base import cpu_cores, open_session, runtime_report, session_array_module
from engines.zoo import MODEL_NAMES, ModelStore


def machine_info() -> dict[str, Any]:
    """The host (`bench.jobs.machine`), plus ONNX Runtime, the GPU, CUDA and TensorRT as this process sees them."""
    info = machine()
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
    info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    cp = cupy_module()
    if cp is not None:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info["gpu"] = f"{name} (sm_{props['major']}{props['minor']}, {props['totalGlobalMem'] / 2**30:.0f} GiB)"
        info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        info["cupy"] = cp.__version__
    report = runtime_report()
    info["tensorrt"] = report.tensorrt_version
    return info


def time_calls(fn: Any, sync: Any, seconds: float, min_calls: int = 5) -> list[float]:
    """Wall time of each call, synchronised with the device, after three warm-up calls."""
    for _ in range(3):
        fn()
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def bench_engines(store: ModelStore, *, device: str, engine: str, batches: list[int], seconds: float,
                  command: str = "vidx bench engines") -> dict[str, Any]:
    """Raw model throughput (inputs already on the device, random uint8 data)."""
    rows = []
    report = runtime_report()
    rng = np.random.default_rng(0)
    for name in MODEL_NAMES:
        model = store.load(name)
        # one run at a time: a CPU session on every core
        session = open_session(model, device=device, engine=engine, max_batch=max(batches),  # type: ignore[arg-type]
                               report=report, threads=cpu_cores())
        xp = session_array_module(session)

        def sync(xp: Any = xp) -> None:  # on CUDA a run's outputs are ready in the calling stream's order
            if xp is not np:
                xp.cuda.get_current_stream().synchronize()

        size = model.spec.input_size
        for batch in batches:
            x = xp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
            times = time_calls(lambda s=session, x=x, n=model.spec.input_name: s.run({n: x}), sync, seconds)
            med = statistics.median(times)
            rows.append({"model": name, "runtime": session.description, "batch": batch,
                         "items_per_s": batch / med, "ms_per_batch": med * 1000, "calls": len(times)})
    return {"benchmark": "engines", "machine": machine_info(),
            "command": command, "rows": rows}
