"""TensorRT sessions: an FP16 engine built from the ONNX file, cached as a serialized plan.

TensorRT 11 removed the weak-typing builder flags (BuilderFlag.FP16 among them): a network is
strongly typed and takes its precision from the graph. So the engine is built from an FP16 copy of
the ONNX file (made by `engines.convert.fp16`, inputs and outputs keep their types), with a
strongly typed network on any TensorRT version that has the flag.

The plan is cached under a key of everything that makes it valid: the ONNX file's sha256, the GPU's
name and compute capability, the TensorRT version, the precision and the optimisation profile. A
timing cache per GPU and TensorRT version makes rebuilds of other profiles fast.

The detectors are dynamic in image size as well as batch (one input per pyramid level): their profile
spans heights and widths from one stride to a 4K frame's finest level (`SPATIAL_MAX`), tuned for the
finest level of a 1080p frame (`SPATIAL_OPT`).

This module is written against TensorRT's documented Python API; it runs only where `tensorrt`
imports and a GPU is present (see docs/gpu.md for what was and was not verified).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.arrays import Array, cupy_module
from engines.errors import ModelError, RuntimeUnavailable
from engines.runtime.base import DeviceKind, RuntimeName
from engines.sources import locked, write_atomic
from engines.zoo import ModelFile

log = logging.getLogger(__name__)

PRECISION = "fp16"
WORKSPACE_BYTES = 1 << 30
SPATIAL_OPT = (800, 1376)
"""Canvas of a 1080p frame's finest face level at the default --min-face 24 (scale 0.7)."""
SPATIAL_MAX = (2176, 3872)
"""A 3840x2160 frame at scale 1 on its canvas (the detectors never upscale a frame)."""


def plan_key(model: ModelFile, gpu_name: str, capability: tuple[int, int], trt_version: str,
             profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]) -> str:
    blob = json.dumps({
        "onnx_sha256": model.provenance.onnx_sha256, "gpu": gpu_name, "cc": list(capability),
        "tensorrt": trt_version, "precision": PRECISION, "profile": [list(p) for p in profile],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def input_profile(model: ModelFile, max_batch: int
                  ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) NHWC input shapes of the optimisation profile."""
    spec = model.spec
    opt_batch = max(1, max_batch // 2)
    if not spec.size_multiple:
        size = spec.input_size
        return (1, size, size, 3), (opt_batch, size, size, 3), (max_batch, size, size, 3)
    step = spec.size_multiple
    return (1, step, step, 3), (opt_batch, *SPATIAL_OPT, 3), (max_batch, *SPATIAL_MAX, 3)


class TensorRTSession:
    """One model as a TensorRT engine with a dynamic batch from 1 to max_batch (and a dynamic image size
    for the detectors)."""

    def __init__(self, model: ModelFile, *, max_batch: int = 64, cache_dir: Path | None = None):
        try:
            import tensorrt as trt
        except Exception as exc:  # the PyPI stub raises at import when NVIDIA's libraries are absent
            raise RuntimeUnavailable(f"tensorrt does not import: {exc}",
                                     hint="install vidx[tensorrt] from NVIDIA's index, "
                                          "or use --engine onnxruntime") from exc
        cp = cupy_module()
        if cp is None:
            raise RuntimeUnavailable("TensorRT needs a CUDA GPU and CuPy", hint="install vidx[tensorrt]")
        self._trt = trt
        self._cp = cp
        self.model = model
        self._logger = trt.Logger(trt.Logger.WARNING)
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        capability = (int(props["major"]), int(props["minor"]))
        self.profile = input_profile(model, max_batch)
        self.cache_dir = (cache_dir or model.path.parent.parent / "tensorrt")
        key = plan_key(model, gpu_name, capability, trt.__version__, self.profile)
        self.plan_path = self.cache_dir / f"{model.spec.name}-{key}.plan"
        gpu_tag = f"{gpu_name.replace(' ', '_')}-sm{capability[0]}{capability[1]}"
        timing_path = self.cache_dir / f"timing-{gpu_tag}-trt{trt.__version__}.cache"
        with locked(self.cache_dir / ".lock"):
            if not self.plan_path.exists():
                self._build(timing_path)
        runtime = trt.Runtime(self._logger)
        self._engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise ModelError("TensorRT cannot deserialize the cached plan", path=self.plan_path,
                             hint="delete it; it is rebuilt on the next run")
        self._context = self._engine.create_execution_context()
        self._context_lock = threading.Lock()
        """One execution context: a run sets its shapes and addresses, then enqueues, with no other run between
        (the pipeline has two analysis steps in flight, each in its own thread)."""
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in self._names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in self._names if n not in self._inputs]
        self._dtypes = {n: trt.nptype(self._engine.get_tensor_dtype(n)) for n in self._names}
        self._description = f"tensorrt {trt.__version__} {PRECISION} on {gpu_name} (batch 1..{max_batch})"

    def _build(self, timing_path: Path) -> None:
        trt = self._trt
        started = time.monotonic()
        log.warning("building the TensorRT engine for %s (once per GPU and version; cached in %s)",
                    self.model.spec.name, self.plan_path.parent)
        import onnx  # only to build a plan: a worker that loads cached plans needs none of it

        from engines.convert.fp16 import to_float16

        graph = to_float16(onnx.load(str(self.model.path)))
        builder = trt.Builder(self._logger)
        flags = 0
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is not None:
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(graph.SerializeToString()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"TensorRT's ONNX parser rejected the model: {errors}", path=self.model.path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, False)
        profile = builder.create_optimization_profile()
        profile.set_shape(self.model.spec.input_name, *self.profile)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ModelError("TensorRT could not build an engine (see the TensorRT log above)", path=self.model.path)
        write_atomic(self.plan_path, bytes(plan))
        write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
        log.warning("built %s in %.1f s", self.plan_path.name, time.monotonic() - started)

    @property
    def runtime(self) -> RuntimeName:
        return "tensorrt"

    @property
    def device(self) -> DeviceKind:
        return "cuda"

    @property
    def description(self) -> str:
        return self._description

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        cp = self._cp
        missing = set(self._inputs) - set(inputs)
        if missing:
            raise ValueError(f"{self.model.spec.name} needs inputs {sorted(missing)}")
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())
        keep: list[Any] = []
        with self._context_lock, self.stream:
            for name in self._inputs:
                arr = cp.ascontiguousarray(cp.asarray(inputs[name], dtype=self._dtypes[name]))
                if any(d > m for d, m in zip(arr.shape, self.profile[2], strict=True)):
                    raise ValueError(f"input {tuple(arr.shape)} exceeds the engine's profile maximum "
                                     f"{self.profile[2]}")
                keep.append(arr)
                self._context.set_input_shape(name, tuple(arr.shape))
                self._context.set_tensor_address(name, arr.data.ptr)
            outputs: dict[str, Array] = {}
            with caller:  # the outputs' memory comes from the caller's stream, which frees it after its own use
                for name in self._outputs:
                    out = cp.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
                    outputs[name] = out
                    self._context.set_tensor_address(name, out.data.ptr)
            if not self._context.execute_async_v3(self.stream.ptr):
                raise RuntimeError(f"TensorRT failed to run {self.model.spec.name}")
        # Inputs must outlive the enqueued work; work the caller queues next (reading the outputs) waits for it.
        caller.wait_event(self.stream.record())
        self._pending = keep
        return outputs
