"""ONNX Runtime sessions: the CPU provider, and the CUDA provider with device-bound inputs and outputs."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from engines.arrays import Array, cupy_module
from engines.errors import ModelError, RuntimeUnavailable
from engines.runtime.base import DeviceKind, RuntimeName
from engines.zoo import ModelFile

log = logging.getLogger(__name__)

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}

FUSED_FP16_ENV = "VIDX_ORT_FP16_FUSED"
"""Experimental, off by default: set to 1 to run FP16 convolutions in NHWC with the bias add fused in
(ONNX Runtime CUDA options prefer_nhwc + fuse_conv_bias). Measured on an H100 (tools/gpu_pipeline_rows.py):
every-frame pipeline +35%, key frames +8-16%, default sampling +17%, the same faces; but ~2x the set-up per
input shape (warm-up 62 s instead of 41 with shapes side by side, and tens of seconds more for each new frame
size), and of the GPU tests only the detector and embedding comparisons have run with it (docs/performance.md,
"GPU through the product")."""


MAX_SHAPE_SESSIONS = 12
"""ONNX Runtime sessions kept per model on CUDA, one per input shape (6 detector levels for a 1080p video with
persons on, so two frame sizes in flight fit). Each keeps a GPU memory arena as large as its shape's peak: a
worker that met many frame sizes ran the H100 out of memory (in the FP16 GPU test) before shapes were
evicted, least recently used first."""


class ShapeSessions:
    """One ONNX Runtime session per input shape, at most `limit`, the least recently used evicted (a run
    still under way keeps its session alive; a shape met again is set up again)."""

    def __init__(self, first: Callable[[], Any], new: Callable[[], Any], limit: int = MAX_SHAPE_SESSIONS):
        self._first: Callable[[], Any] | None = first
        self._new = new
        self.limit = limit
        self._sessions: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()  # two analysis steps in flight may meet a new frame size at once
        self.evicted = 0

    def get(self, shape: tuple[int, ...]) -> Any:
        with self._lock:
            session = self._sessions.get(shape)
            if session is not None:
                self._sessions.move_to_end(shape)
                return session
            if self._first is not None:  # the session opened at load takes the first shape
                make, self._first = self._first, None
            else:
                make = self._new
            while len(self._sessions) >= self.limit:
                self._sessions.popitem(last=False)
                self.evicted += 1
            session = self._sessions[shape] = make()
            return session

    def shapes(self) -> list[tuple[int, ...]]:
        with self._lock:
            return list(self._sessions)


class OnnxRuntimeSession:
    """One model on one ONNX Runtime provider.

    On CUDA the session runs on its own CuPy stream (`stream`), given to ONNX Runtime as its compute
    stream, so that pre-processing kernels, the model and post-processing are ordered on one stream
    without device-wide synchronisation. Inputs and outputs stay in GPU memory (IO binding).

    On CUDA every input shape (the detectors' pyramid levels and frame sizes, the embedder's padded
    batch sizes) gets an ONNX Runtime session of its own: the CUDA provider keeps set-up (cuDNN plans,
    ~6-10 s per shape at 32 frames for the detectors on the H100) only for the last shape a convolution
    saw, so one session fed alternating pyramid levels redid it on every run, and one embedder session
    fed alternating batch sizes spent more time setting up than embedding. Each session sees one shape
    and sets up once, up to MAX_SHAPE_SESSIONS shapes per model, as each session's memory arena grows to its
    shape's peak. (No provider option removes the set-up without slower convolutions: docs/performance.md,
    "Known to be slow, and why".)
    """

    def __init__(self, model: ModelFile, *, device: DeviceKind = "cpu", threads: int = 0, fp16: bool = False,
                 int8: bool = False, dense_depthwise: bool = False):
        """fp16: run an FP16 copy of the model (engines.convert.fp16: weights and activations in half
        precision, the uint8 input and float32 outputs kept, so callers see no difference). int8: run its
        INT8 copy (engines.int8, made and cached on first use; the person detector on a CPU). dense_depthwise:
        its depthwise convolutions as ordinary ones (engines.convert.depthwise; RuntimeConfig.quick_start)."""
        import onnxruntime as ort

        self._ort = ort
        self.model = model
        self.fp16 = fp16
        self.int8 = int8
        self.dense_depthwise = dense_depthwise
        self._device: DeviceKind = device
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if device == "cpu":
            # ONNX Runtime's pool threads spin between runs by default, taking the cores the decoder
            # threads need: on a 2-core box the CPU pipeline ran 3-12% faster without (docs/performance.md).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.stream: Any = None
        providers: list[Any]
        if device == "cuda":
            cp = cupy_module()
            if cp is None or "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailable("ONNX Runtime's CUDA provider or CuPy is not available",
                                         hint="install vidx[gpu] (see docs/gpu.md)")
            self.stream = cp.cuda.Stream(non_blocking=True)
            cuda_options = {
                "device_id": cp.cuda.runtime.getDevice(),
                "user_compute_stream": str(self.stream.ptr),
                "cudnn_conv_algo_search": "HEURISTIC",
                # Each shape's session has its own memory arena: grown by what is asked rather than doubled, it
                # holds no spare half of its last extension. Run times were the same both ways on the H100
                # (docs/measurements/ort_cuda_options_h100.txt, part 1); its memory has not been measured.
                "arena_extend_strategy": "kSameAsRequested",
            }
            if fp16 and os.environ.get(FUSED_FP16_ENV) == "1":
                cuda_options.update(prefer_nhwc="1", fuse_conv_bias="1")
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        source = str(model.path)
        if int8:  # made outside the try below: its own errors (a photo that cannot be fetched) say what failed
            from engines.int8 import int8_copy

            source = str(int8_copy(model))
        graph: str | bytes = source
        try:
            if fp16 or dense_depthwise:  # rewritten copies of the graph, serialised once
                import onnx

                from engines.convert import depthwise
                from engines.convert.fp16 import to_float16

                proto = onnx.load(source)
                if fp16:
                    proto = to_float16(proto)
                if dense_depthwise:
                    proto = depthwise.dense_depthwise(proto)
                graph = proto.SerializeToString()
            self._session = ort.InferenceSession(graph, sess_options=opts, providers=providers)
            self._by_shape: ShapeSessions | None = None
            if device == "cuda":
                first = self._session
                self._by_shape = ShapeSessions(lambda: first,
                                               lambda: ort.InferenceSession(graph, sess_options=opts,
                                                                            providers=providers))
        except Exception as exc:  # ORT raises its own untyped errors for corrupt or unsupported graphs
            raise ModelError(f"ONNX Runtime cannot load the model: {exc}", path=model.path,
                             hint="run `vidx models fetch --force`") from exc
        self._active = self._session.get_providers()[0]
        if device == "cuda" and self._active != "CUDAExecutionProvider":
            raise RuntimeUnavailable(f"ONNX Runtime fell back to {self._active} for {model.spec.name}")
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self._outputs = [(o.name, o.shape, ORT_TO_NUMPY[o.type]) for o in self._session.get_outputs()]

    @property
    def runtime(self) -> RuntimeName:
        return "onnxruntime"

    @property
    def device(self) -> DeviceKind:
        return self._device

    @property
    def description(self) -> str:
        precision = " FP16" if self.fp16 else " INT8" if self.int8 else ""
        quick = ", depthwise as dense (quick start)" if self.dense_depthwise else ""
        return f"onnxruntime {self._ort.__version__} {self._active}{precision}{quick}"

    def shapes_set_up(self) -> set[tuple[int, ...]] | None:
        """On CUDA, the input shapes (all inputs' dimensions in a row) whose session is held, set up or being
        set up; None on the CPU, where a session is not tied to a shape."""
        return set(self._by_shape.shapes()) if self._by_shape is not None else None

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        unknown = set(inputs) - set(self._inputs)
        if unknown:
            raise ValueError(f"{self.model.spec.name} has no input {sorted(unknown)}; "
                             f"inputs are {sorted(self._inputs)}")
        if self._device == "cpu":
            outs = self._session.run(None, {k: np.ascontiguousarray(v) for k, v in inputs.items()})
            return {name: out for (name, _, _), out in zip(self._outputs, outs, strict=True)}
        return self._run_cuda(inputs)

    def _run_cuda(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        cp = cupy_module()
        if cp is None:  # checked in __init__; keeps the type checker honest
            raise RuntimeUnavailable("CuPy is not available")
        # Inputs may come from kernels on another stream: order this session's stream after them.
        self.stream.wait_event(cp.cuda.get_current_stream().record())
        session = self._session
        if self._by_shape is not None:
            session = self._by_shape.get(tuple(int(d) for v in inputs.values() for d in v.shape))
        binding = session.io_binding()
        batch = 0
        keep_alive = []
        for name, value in inputs.items():
            arr = cp.ascontiguousarray(cp.asarray(value))
            keep_alive.append(arr)
            batch = int(arr.shape[0])
            binding.bind_input(name, "cuda", cp.cuda.runtime.getDevice(), arr.dtype, list(arr.shape), arr.data.ptr)
        outputs: dict[str, Array] = {}
        allocated_by_ort = []
        with self.stream:
            for name, shape, dtype in self._outputs:
                if any(not isinstance(d, int) for d in shape[1:]):
                    # Sized by the input (a detector's anchors grow with the image): ONNX Runtime allocates it.
                    binding.bind_output(name, "cuda", cp.cuda.runtime.getDevice())
                    allocated_by_ort.append((name, dtype))
                    continue
                dims = [batch if not isinstance(d, int) else d for d in shape]
                out = cp.empty(dims, dtype=dtype)
                outputs[name] = out
                binding.bind_output(name, "cuda", cp.cuda.runtime.getDevice(), dtype, dims, out.data.ptr)
        session.run_with_iobinding(binding)
        if allocated_by_ort:
            values = dict(zip((name for name, _, _ in self._outputs), binding.get_outputs(), strict=True))
            for name, dtype in allocated_by_ort:
                value = values[name]
                shape = tuple(value.shape())
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                # The CuPy array keeps ONNX Runtime's buffer (the OrtValue) alive as the memory's owner.
                memory = cp.cuda.UnownedMemory(value.data_ptr(), nbytes, value)
                outputs[name] = cp.ndarray(shape, dtype=dtype, memptr=cp.cuda.MemoryPointer(memory, 0))
        return outputs
