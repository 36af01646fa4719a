"""The session protocol and the one place that picks a runtime.

Preference, among what is available: TensorRT on a GPU, then ONNX Runtime's CUDA provider, then
ONNX Runtime on the CPU. Every fallback is logged with its reason, and each session says what it is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Literal, Protocol, get_args

import numpy as np

from engines.arrays import Array, cupy_module
from engines.errors import RuntimeUnavailable
from engines.zoo import ModelFile
from schemas.config import DeviceChoice, EngineChoice, EngineStart

log = logging.getLogger(__name__)

RuntimeName = Literal["onnxruntime", "tensorrt"]
DeviceKind = Literal["cpu", "cuda"]
RUNTIME_NAMES: tuple[RuntimeName, ...] = get_args(RuntimeName)
CPU_RUNS_AT_ONCE = 2
"""Model runs that share a CPU's cores at once (the pipeline's analysis steps in flight on a CPU), each on
cores / CPU_RUNS_AT_ONCE threads: these models' convolutions are too small to keep many threads busy, so
two runs on half the cores each analyse more frames per second than one run on all of them."""


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity), fewer where OMP_NUM_THREADS says so: Ray sets it
    to a worker's CPUs, so that workers sharing a machine do not each spread over all of its cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    share = os.environ.get("OMP_NUM_THREADS", "")
    if share.isdigit() and int(share) > 0:
        cores = min(cores, int(share))
    return cores


def cpu_runs_at_once() -> int:
    return min(CPU_RUNS_AT_ONCE, cpu_cores())


def cpu_run_threads() -> int:
    """Threads of one CPU session's run: its share of the cores."""
    return max(1, cpu_cores() // cpu_runs_at_once())


class Session(Protocol):
    """A loaded model. Inputs and outputs live where the session runs: numpy on the CPU, CuPy on CUDA."""

    @property
    def runtime(self) -> RuntimeName: ...

    @property
    def device(self) -> DeviceKind: ...

    @property
    def description(self) -> str:
        """One line for logs and --json output: runtime, version, provider or precision."""
        ...

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """The model's outputs for `inputs`. On CUDA the run follows the work already queued on the caller's
        current stream and may return before it has finished: the outputs are ready in that stream's order
        (work queued on it next sees them; the host synchronises it, as `.get()` does, before reading them)."""
        ...


def session_array_module(session: Session) -> ModuleType:
    """The array module a session's inputs and outputs live in: numpy, or CuPy on CUDA."""
    if session.device == "cuda":
        cp = cupy_module()
        if cp is not None:
            return cp
    return np


@dataclass(frozen=True)
class RuntimeReport:
    """What this machine offers, for `vidx doctor`-style output and for the automatic choice."""

    cuda_devices: int
    onnxruntime_providers: tuple[str, ...]
    tensorrt_version: str | None

    @property
    def has_gpu(self) -> bool:
        return self.cuda_devices > 0

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.onnxruntime_providers


def runtime_report() -> RuntimeReport:
    cp = cupy_module()
    devices = int(cp.cuda.runtime.getDeviceCount()) if cp is not None else 0
    try:
        import onnxruntime as ort

        providers: tuple[str, ...] = tuple(ort.get_available_providers())
    except ImportError:
        providers = ()
    trt_version = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt as trt

            trt_version = str(trt.__version__)
        except Exception as exc:  # the PyPI stub raises on import when its libraries are absent
            log.info("tensorrt is installed but does not import: %s", exc)
    return RuntimeReport(devices, providers, trt_version)


def resolve_device(device: DeviceChoice, report: RuntimeReport) -> DeviceKind:
    if device == "cpu":
        return "cpu"
    if report.has_gpu:
        return "cuda"
    if device == "gpu":
        raise RuntimeUnavailable(
            "--device gpu was asked for, but no CUDA GPU is usable (CuPy missing or no device)",
            hint="install vidx[gpu] on a machine with an NVIDIA driver, or use --device cpu",
        )
    return "cpu"


def resolve_runtime(engine: EngineChoice, device: DeviceKind, report: RuntimeReport) -> RuntimeName:
    if engine == "tensorrt":
        if device != "cuda" or report.tensorrt_version is None:
            raise RuntimeUnavailable(
                "--engine tensorrt needs the tensorrt package and a CUDA GPU",
                hint="install vidx[tensorrt], or use --engine onnxruntime",
            )
        return "tensorrt"
    if engine in ("onnxruntime", "onnxruntime-fp16", "onnxruntime-int8"):
        return "onnxruntime"
    if device == "cuda" and report.tensorrt_version is not None:
        return "tensorrt"
    if device == "cuda":
        log.info("TensorRT is not installed: using ONNX Runtime on the GPU")
    return "onnxruntime"


def open_session(
    model: ModelFile,
    *,
    device: DeviceChoice = "auto",
    engine: EngineChoice = "auto",
    max_batch: int = 64,
    report: RuntimeReport | None = None,
    start: EngineStart = "wait",
    threads: int = 0,
) -> Session:
    """Open the best available session for a model (or exactly the one asked for). `start`: on CUDA with ONNX
    Runtime, how each input shape's session is set up (RuntimeConfig.engine_start). `threads`: a CPU session's
    threads per run (0: cpu_run_threads(), its share of the cores beside the other runs at once)."""
    report = report or runtime_report()
    kind = resolve_device(device, report)
    runtime = resolve_runtime(engine, kind, report)
    if runtime == "tensorrt":
        from engines.runtime.tensorrt import TensorRTSession

        return TensorRTSession(model, max_batch=max_batch)
    from engines.runtime.onnxruntime import OnnxRuntimeSession

    if kind == "cuda" and not report.ort_cuda:
        if device == "gpu":
            raise RuntimeUnavailable(
                "ONNX Runtime has no CUDA provider here (only " + ", ".join(report.onnxruntime_providers) + ")",
                hint="install onnxruntime-gpu in place of onnxruntime (see docs/gpu.md), or use --device cpu",
            )
        log.warning("ONNX Runtime has no CUDA provider: running %s on the CPU", model.spec.name)
        kind = "cpu"
    # On a GPU the automatic choice runs FP16 models, as TensorRT does (measured on an H100: the same tracks
    # and search hits as FP32, 7-14% more frames per second); --engine onnxruntime keeps FP32.
    fp16 = engine == "onnxruntime-fp16" or (engine == "auto" and kind == "cuda")
    if fp16 and kind != "cuda":
        log.warning("--engine onnxruntime-fp16 runs FP16 on a GPU only: %s runs in FP32 on the CPU", model.spec.name)
        fp16 = False
    # --engine onnxruntime-int8 runs the person detector's INT8 copy on a CPU (engines/int8.py: faster, the same
    # faces and people per frame, person tracks in crowds cut at other places)
    from engines.int8 import INT8_MODELS

    int8 = engine == "onnxruntime-int8" and model.spec.name in INT8_MODELS
    if int8 and kind != "cpu":
        log.warning("--engine onnxruntime-int8 runs INT8 on a CPU only: %s runs in FP32 on the GPU", model.spec.name)
        int8 = False
    return OnnxRuntimeSession(model, device=kind, threads=threads, fp16=fp16, int8=int8, start=start)
