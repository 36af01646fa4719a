"""ONNX Runtime sessions: the CPU provider, and the CUDA provider with device-bound inputs and outputs."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np

from engines.arrays import Array, cupy_module
from engines.convert.fixed_shapes import free_dimension_sizes
from engines.convert.forms import graph_forms
from engines.cuda_graphs import CAPTURE_GATE, CapturedGraph, GraphCaptureError, capture
from engines.errors import ModelError, RuntimeUnavailable
from engines.runtime.base import DeviceKind, RuntimeName, cpu_run_threads
from engines.streams import IN_FLIGHT
from engines.zoo import ModelFile
from schemas.config import EngineStart

log = logging.getLogger(__name__)

ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}

FUSED_FP16_ENV = "VIDX_ORT_FP16_FUSED"
"""An FP16 model's fastest CUDA sessions run its convolutions in NHWC with the bias add fused in (ONNX Runtime
CUDA options prefer_nhwc + fuse_conv_bias): on an H100 the every-frame pipeline analysed 648 frames/s against
454-475 without, the same faces, for ~47 s of set-up per worker against ~27 (docs/performance.md). Set it to
0 to run them in NCHW without fusion (for comparisons)."""

FIXED_DIMS_ENV = "VIDX_ORT_FIXED_DIMS"
"""On CUDA each input shape's session fixes that shape's input dimensions by name (ONNX Runtime's free-dimension
overrides), so that ONNX Runtime folds its shape arithmetic (engines/convert/fixed_shapes.py). Set it to 0 to keep
them free (for comparisons; the person detector's runs then cannot be recorded as CUDA graphs)."""

FOLD_ENV = "VIDX_ORT_FOLD_SEPARABLE"
"""On CUDA, each depthwise convolution that feeds only a narrowing 1 x 1 one (FOLD_RULE) is folded with it into
one ordinary convolution (engines/convert/separable.py: the same outputs up to rounding). BlazeFace has 40 such
pairs, 20 of them narrowing. Folded, its fastest sessions set up ~3x faster on an H100 (cuDNN compiles plans at run
time for depthwise convolutions, not for ordinary ones), every-frame rows ran 3.8% faster on H.264 and within ~1% on
HEVC; all 40 folded ran 3-4% slower (docs/performance.md). Set it to 0 to run the pairs as the model has them (for
comparisons)."""


def narrowing(channels_in: int, channels_out: int) -> bool:
    """A pair whose 1 x 1 convolution has fewer output channels than input ones."""
    return channels_out < channels_in


FOLD_RULE: Callable[[int, int], bool] = narrowing
"""Which pairs are folded, by (input channels, output channels) (see FOLD_ENV)."""

CUDA_GRAPHS_ENV = "VIDX_ORT_CUDA_GRAPHS"
"""On CUDA, each input shape's second run (or a later one, where a capture had to wait) is recorded as a CUDA
graph and later runs replay it: one launch where a run launches dozens of kernels, each costing the host ~10 us
(engines/cuda_graphs.py; docs/performance.md). A shape whose run cannot be recorded keeps running as before.
Set it to 0 to run without graphs (for comparisons)."""


MAX_SHAPE_SESSIONS = 12
"""ONNX Runtime sessions kept per model on CUDA, one per input shape (6 detector levels for a 1080p video with
persons on, so two frame sizes in flight fit). Each keeps a GPU memory arena as large as its shape's peak: a
worker that met many frame sizes ran the H100 out of memory (in the FP16 GPU test) before shapes were
evicted, least recently used first."""

EXIT_WAIT_S = 120.0
"""At exit, the longest wait for a set-up under way (one shape takes seconds; this bounds a hung one)."""

InputSpec = tuple[tuple[str, tuple[int, ...], str], ...]
"""A run's inputs: (name, shape, NumPy dtype string) each."""


def _input_spec(inputs: Mapping[str, Array]) -> InputSpec:
    return tuple((name, tuple(int(d) for d in v.shape), np.dtype(v.dtype).str) for name, v in inputs.items())


class SetUpBehind:
    """One thread per process that sets faster sessions up behind the quick ones, a shape at a time (set-up is
    serialised inside the libraries anyway: docs/performance.md). At exit the shapes still waiting are dropped
    and the one under way is finished first: tearing the libraries down under a thread still inside them could
    crash the exit."""

    def __init__(self) -> None:
        self._jobs: deque[Callable[[], object]] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._closed = False
        self._since: float | None = None
        """When the set-ups under way began (the queue was last empty before it)."""
        self._done = 0

    def submit(self, job: Callable[[], object]) -> None:
        """Queues a set-up; a job that returns True set a session up (counted in the log line at the end)."""
        with self._cv:
            if self._closed:
                return
            self._jobs.append(job)
            if self._since is None:
                self._since = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="vidx-set-up-behind", daemon=True)
                self._thread.start()
                atexit.register(self.close, EXIT_WAIT_S)
            self._cv.notify_all()

    def pending(self) -> int:
        """Set-ups waiting or under way."""
        with self._cv:
            return len(self._jobs) + int(self._busy)

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until no set-up is waiting or under way; whether that happened within `timeout` seconds."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drops the set-ups still waiting, waits for the one under way; later submissions are ignored."""
        with self._cv:
            self._closed = True
            self._jobs.clear()
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._busy, timeout)

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._jobs) or self._closed)
                if self._closed:
                    return
                job = self._jobs.popleft()
                self._busy = True
            done = False
            try:
                done = job() is True
            except Exception:  # the quick session keeps the shape: slower, not wrong
                log.warning("setting up a faster ONNX Runtime session failed; the quick one stays", exc_info=True)
            finally:
                with self._cv:
                    self._busy = False
                    self._done += int(done)
                    if not self._jobs and self._since is not None:
                        log.info("fastest sessions set up behind the quick ones: %d shapes in %.1f s", self._done,
                                 time.monotonic() - self._since)
                        self._since, self._done = None, 0
                    self._cv.notify_all()


SET_UP_BEHIND = SetUpBehind()


class ShapeSessions:
    """One ONNX Runtime session per input shape, at most `limit`, the least recently used evicted (a run
    still under way keeps its session alive; a shape met again is set up again). `new` opens a shape's session
    for that shape's inputs (`get`'s `spec`, called only for a shape met for the first time, so that runs of
    shapes already held do no more than look their session up).

    With `faster`, each new shape's session is a quick one, and `faster` (which opens a session and sets it up
    for a shape's inputs, taking seconds) runs behind it on `behind`; the faster session replaces the quick one
    when it is ready."""

    def __init__(self, new: Callable[[InputSpec], Any], limit: int = MAX_SHAPE_SESSIONS, *,
                 faster: Callable[[InputSpec], Any] | None = None, behind: SetUpBehind | None = None):
        self._new = new
        self.limit = limit
        self._faster = faster
        self._behind = behind or SET_UP_BEHIND
        self._sessions: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._fast: dict[tuple[int, ...], float] = {}
        """The shapes whose faster session has taken over, and the seconds it took to set up."""
        self._lock = threading.Lock()  # two analysis steps in flight may meet a new frame size at once
        self.evicted = 0

    def get(self, shape: tuple[int, ...], spec: Callable[[], InputSpec] = tuple) -> Any:
        let_go: list[Any] = []
        try:
            with self._lock:
                session = self._sessions.get(shape)
                if session is not None:
                    self._sessions.move_to_end(shape)
                    return session
                while len(self._sessions) >= self.limit:
                    gone = next(iter(self._sessions))
                    let_go.append(self._sessions.pop(gone))
                    self._fast.pop(gone, None)
                    self.evicted += 1
                inputs = spec()
                session = self._sessions[shape] = self._new(inputs)
        finally:
            _let_go(let_go)
        if self._faster is not None:  # the job holds the table weakly: dropped engines are not kept for it
            table = weakref.ref(self)
            self._behind.submit(lambda: (t := table()) is not None and t._take_over(shape, inputs))
        return session

    def sessions(self) -> list[Any]:
        """The sessions held, least recently used first."""
        with self._lock:
            return list(self._sessions.values())

    def _take_over(self, shape: tuple[int, ...], spec: InputSpec) -> bool:
        """Sets the faster session of a shape up and swaps it in; whether it did."""
        if self._faster is None:
            return False
        with self._lock:
            if shape not in self._sessions or shape in self._fast:  # evicted, or taken over already
                return False
        started = time.monotonic()
        let_go = [self._faster(spec)]  # the one of the two sessions not kept: the quick one, or this one
        with self._lock:
            taken_over = shape in self._sessions and shape not in self._fast
            if taken_over:
                let_go[0], self._sessions[shape] = self._sessions[shape], let_go[0]
                self._fast[shape] = time.monotonic() - started
        _let_go(let_go)
        return taken_over

    def shapes(self) -> list[tuple[int, ...]]:
        with self._lock:
            return list(self._sessions)

    def taken_over(self) -> dict[tuple[int, ...], float]:
        """The shapes whose faster session has taken over (seconds each took to set up); empty without `faster`."""
        with self._lock:
            return dict(self._fast)


def _let_go(sessions: list[Any]) -> None:
    """Drops the sessions a table let go (evicted, or taken over) apart from CUDA graph captures: releasing a
    session's memory may synchronise the device. Each is marked `retired`: where replays still queued hold it,
    IN_FLIGHT drops it apart from captures too once they are done."""
    if sessions:
        for session in sessions:
            if isinstance(session, ShapeSession):
                session.retired = True
        with CAPTURE_GATE.apart():
            sessions.clear()


class ShapeSession:
    """One input shape's ONNX Runtime session on CUDA and, once it has run, the CUDA graph of a run.

    The session computes on a stream of its own (`stream`, its ONNX Runtime compute stream), on which nothing
    else is ever enqueued: a run recorded there records only itself, whatever other threads do meanwhile. The
    graph is recorded with fixed input and output buffers (it replays at the addresses it was recorded with)
    and is replayed on the model's stream, each replay copying its inputs in and its outputs out. Once a shape
    has a graph its session never runs again: a run would take the graph's scratch memory from the session's
    arena."""

    def __init__(self, session: Any, stream: Any):
        self.session = session
        self.stream = stream
        self.runs = 0
        self.output_shapes: dict[str, tuple[int, ...]] = {}
        """Each output's shape, from the first run."""
        self.graph: CapturedGraph | None = None
        self.refused: str | None = None
        """Why this shape runs without a graph."""
        self.inputs: dict[str, Array] = {}
        self.outputs: dict[str, Array] = {}
        self.lock = threading.Lock()
        """Held for a run, for the recording, and from copying a replay's inputs in to copying its outputs out
        (two threads may run one shape)."""
        self.retired = False
        """Set when its table lets it go: whoever holds it last drops it apart from CUDA graph captures
        (engines.streams.InFlight; a run under way when it was let go drops it as it returns)."""


class OnnxRuntimeSession:
    """One model on one ONNX Runtime provider.

    On CUDA the model runs on CuPy streams of its own (`stream`, and each shape's), ordered after the caller's
    current stream and before it with events, without device-wide synchronisation: a run's outputs are
    ready in the caller's stream order (engines.runtime.base.Session.run). Inputs and outputs stay in GPU
    memory (IO binding).

    On CUDA every input shape (the detectors' pyramid levels and frame sizes, the embedder's padded
    batch sizes) gets an ONNX Runtime session of its own: the CUDA provider keeps set-up (cuDNN plans,
    ~5-10 s per shape at 32 frames for the face detector on the H100) only for the last shape a convolution
    saw, so one session fed alternating pyramid levels redid it on every run, and one embedder session
    fed alternating batch sizes spent more time setting up than embedding. Each session sees one shape
    and sets up once, up to MAX_SHAPE_SESSIONS shapes per model, as each session's memory arena grows to its
    shape's peak. How a shape's session is set up is `start` (RuntimeConfig.engine_start): the fastest form
    (`wait`), a quick one (`quick`: depthwise convolutions as ordinary ones, NCHW, no fusion: about a second
    per shape), or the quick one first and the fastest behind it (`background`). Each shape's session fixes
    that shape's input dimensions (engines.convert.fixed_shapes), and its second run is recorded as a CUDA graph
    that later runs replay (CUDA_GRAPHS_ENV; `ShapeSession`). The graphs a GPU session opens (FP16, folded
    pairs, dense depthwise convolutions) are made once and cached beside the model (engines.convert.forms).
    """

    def __init__(self, model: ModelFile, *, device: DeviceKind = "cpu", threads: int = 0, fp16: bool = False,
                 int8: bool = False, start: EngineStart = "wait"):
        """fp16: run an FP16 copy of the model (engines.convert.fp16: weights and activations in half
        precision, the uint8 input and float32 outputs kept, so callers see no difference). int8: run its
        INT8 copy (engines.int8, made and cached on first use; the person detector on a CPU). threads: a CPU run's
        threads (0: engines.runtime.base.cpu_run_threads()). start: on CUDA,
        how each input shape's session is set up (above); on a CPU sessions are not tied to shapes and `start`
        changes nothing."""
        import onnxruntime as ort

        # Errors only from ONNX Runtime's default logger (the sessions' own is set in `_options`): on CUDA its
        # provider-options lookup warned once per shape's session (28 of a GPU `vidx index`'s 38 stderr lines).
        ort.set_default_logger_severity(3)
        self._ort = ort
        self.model = model
        self.fp16 = fp16
        self.int8 = int8
        self._device: DeviceKind = device
        self._threads = threads
        opts = self._options()
        self.stream: Any = None
        self._device_id = 0
        providers: list[Any] = ["CPUExecutionProvider"]
        fast_providers = providers
        if device == "cuda":
            cp = cupy_module()
            if cp is None or "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailable("ONNX Runtime's CUDA provider or CuPy is not available",
                                         hint="install vidx[gpu] (see docs/gpu.md)")
            self.stream = cp.cuda.Stream(non_blocking=True)
            self._device_id = cp.cuda.runtime.getDevice()
            cuda_options = {
                "device_id": self._device_id,
                "user_compute_stream": str(self.stream.ptr),
                "cudnn_conv_algo_search": "HEURISTIC",
                # Each shape's session has its own memory arena: grown by what is asked rather than doubled, it
                # holds no spare half of its last extension. Run times were the same both ways on the H100
                # (docs/measurements/ort_cuda_options_h100.txt, part 1); its memory has not been measured.
                "arena_extend_strategy": "kSameAsRequested",
            }
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
            fast_providers = providers
            if fp16 and os.environ.get(FUSED_FP16_ENV, "1") != "0":
                fast_providers = [("CUDAExecutionProvider", {**cuda_options, "prefer_nhwc": "1",
                                                             "fuse_conv_bias": "1"}), "CPUExecutionProvider"]
        self.fused = fast_providers is not providers
        """The fastest sessions run fused NHWC convolutions (FP16 on CUDA, unless VIDX_ORT_FP16_FUSED=0)."""
        self.cuda_graphs = device == "cuda" and os.environ.get(CUDA_GRAPHS_ENV, "1") != "0"
        """Runs on CUDA replay each shape's recorded CUDA graph (unless VIDX_ORT_CUDA_GRAPHS=0)."""
        self.fixed_dims = os.environ.get(FIXED_DIMS_ENV, "1") != "0"
        self._unsynchronised: Any = None
        if self.cuda_graphs:  # a run being recorded must not wait for its own stream
            self._unsynchronised = ort.RunOptions()
            self._unsynchronised.add_run_config_entry("disable_synchronize_execution_providers", "1")
        source = str(model.path)
        if int8:  # made outside the try below: its own errors (a photo that cannot be fetched) say what failed
            from engines.int8 import int8_copy

            source = str(int8_copy(model))
        try:
            on_cuda = device == "cuda"
            forms = graph_forms(model, source, fp16=fp16, dense=on_cuda and start != "wait",
                                fold=FOLD_RULE if on_cuda and os.environ.get(FOLD_ENV, "1") != "0" else None)
            fast_graph, quick_graph, self.folded = forms.fastest, forms.quick, forms.folded
            # the quick form differs from the fastest where the model has depthwise convolutions or runs fused
            quick = start != "wait" and (quick_graph != fast_graph or self.fused)
            graph, session_providers = (quick_graph, providers) if quick else (fast_graph, fast_providers)
            self.start: EngineStart = start if quick else "wait"
            self.dense_depthwise = quick and quick_graph != fast_graph
            self._session = self._inference_session(graph, opts, session_providers)
            self._by_shape: ShapeSessions | None = None
            if device == "cuda":
                faster = None
                if self.start == "background":
                    faster = partial(self._set_up, fast_graph, fast_providers)
                self._by_shape = ShapeSessions(partial(self._open_shape, graph, session_providers),
                                               faster=faster)
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
        fused = " NHWC fused" if self.fused and self.start != "quick" else ""
        dense = " (depthwise as dense)" if self.dense_depthwise else ""
        start = {"wait": "", "quick": f", quick start{dense}",
                 "background": f", quick start{dense}, fastest set up behind"}
        threads = ""
        if self._device == "cpu":
            n = self._session.get_session_options().intra_op_num_threads
            threads = f", {n} thread{'s' if n != 1 else ''} a run"
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        if self.folded:
            graphs += f", {self.folded} separable pairs folded"
        return (f"onnxruntime {self._ort.__version__} {self._active}{precision}{fused}{graphs}{start[self.start]}"
                f"{threads}")

    def shapes_set_up(self) -> set[tuple[int, ...]] | None:
        """On CUDA, the input shapes (all inputs' dimensions in a row) whose session is held, set up or being
        set up; None on the CPU, where a session is not tied to a shape."""
        return set(self._by_shape.shapes()) if self._by_shape is not None else None

    def shapes_taken_over(self) -> dict[tuple[int, ...], float]:
        """With `start` background, the shapes whose fastest session has taken over from the quick one, and the
        seconds each took to set up behind it."""
        return self._by_shape.taken_over() if self._by_shape is not None else {}

    def shapes_evicted(self) -> int:
        """On CUDA, how many shape sessions were let go to stay within MAX_SHAPE_SESSIONS (each shape met again is
        set up again: seconds of cuDNN set-up); 0 on the CPU."""
        return self._by_shape.evicted if self._by_shape is not None else 0

    def cuda_graph_shapes(self) -> tuple[int, int]:
        """On CUDA, of the shapes held: how many replay a recorded graph, and how many could not be recorded."""
        held = self._by_shape.sessions() if self._by_shape is not None else []
        return (sum(s.graph is not None for s in held), sum(s.refused is not None for s in held))

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        unknown = set(inputs) - set(self._inputs)
        if unknown:
            raise ValueError(f"{self.model.spec.name} has no input {sorted(unknown)}; "
                             f"inputs are {sorted(self._inputs)}")
        if self._device == "cpu" or self._by_shape is None:
            outs = self._session.run(None, {k: np.ascontiguousarray(v) for k, v in inputs.items()})
            return {name: out for (name, _, _), out in zip(self._outputs, outs, strict=True)}
        shape = self._by_shape.get(tuple(int(d) for v in inputs.values() for d in v.shape),
                                   partial(_input_spec, inputs))
        with shape.lock:
            if shape.graph is None and shape.refused is None and shape.runs > 0 and self.cuda_graphs:
                with CAPTURE_GATE.capturing() as allowed:
                    if allowed:  # else a session or decoder is set up or let go meanwhile: recorded at a later run
                        self._record(shape, inputs)
            if shape.graph is not None:
                return self._replay(shape, inputs)
            return self._run_cuda(shape, inputs)

    def _options(self) -> Any:
        """A session's options (each shape's session has its own: its input dimensions are fixed in them)."""
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads or self._device == "cpu":
            opts.intra_op_num_threads = self._threads or cpu_run_threads()
        opts.log_severity_level = 3
        if self._device == "cpu":
            # ONNX Runtime's pool threads spin between runs by default, taking the cores the decoder
            # threads need: on a 2-core box the CPU pipeline ran 3-12% faster without (docs/performance.md).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _open_shape(self, graph: str | bytes, providers: list[Any], spec: InputSpec) -> ShapeSession:
        """A session of `graph` for one shape's inputs (their dimensions fixed by name, unless
        VIDX_ORT_FIXED_DIMS=0), computing on a CUDA stream of its own."""
        cp = cupy_module()
        if cp is None:  # checked in __init__; keeps the type checker honest
            raise RuntimeUnavailable("CuPy is not available")
        stream = cp.cuda.Stream(non_blocking=True)
        own = [(p[0], {**p[1], "user_compute_stream": str(stream.ptr)}) if isinstance(p, tuple) else p
               for p in providers]
        return ShapeSession(self._inference_session(graph, self._shape_options(spec), own), stream)

    def _inference_session(self, graph: str | bytes, opts: Any, providers: list[Any]) -> Any:
        """An ONNX Runtime session, made apart from CUDA graph captures: a CUDA session's set-up may synchronise
        the device (engines/cuda_graphs.py, CAPTURE_GATE)."""
        with CAPTURE_GATE.apart():
            return self._ort.InferenceSession(graph, sess_options=opts, providers=providers)

    def _shape_options(self, spec: InputSpec) -> Any:
        """The options of a session for one shape's inputs: their free dimensions fixed by name (unless
        VIDX_ORT_FIXED_DIMS=0), so that ONNX Runtime folds the graph's shape arithmetic."""
        opts = self._options()
        if self.fixed_dims:
            declared = {name: i.shape for name, i in self._inputs.items()}
            for dim, size in free_dimension_sizes(declared, {name: shape for name, shape, _ in spec}).items():
                opts.add_free_dimension_override_by_name(dim, size)
        return opts

    def _set_up(self, graph: str | bytes, providers: list[Any], spec: InputSpec) -> ShapeSession:
        """A shape's session of `graph` on `providers`, set up for its inputs by a run on zeros (behind the
        quick sessions, in SetUpBehind's thread)."""
        cp = cupy_module()
        shape = self._open_shape(graph, providers, spec)
        with cp.cuda.Device(self._device_id), self.stream:  # type: ignore[union-attr]
            self._run_cuda(shape, {name: cp.zeros(dims, np.dtype(dtype))  # type: ignore[union-attr]
                                   for name, dims, dtype in spec})
        return shape

    def _record(self, shape: ShapeSession, inputs: Mapping[str, Array]) -> None:
        """Records a run of `shape` (its lock held) as a CUDA graph on fixed buffers; a shape whose run cannot be
        recorded runs without one from then on."""
        cp = cupy_module()
        if cp is None:
            return
        device = cp.cuda.runtime.getDevice()
        with self.stream:  # allocated on the model's stream, where replays use them
            fixed_in = {name: cp.empty(tuple(int(d) for d in v.shape), np.dtype(v.dtype)) for name, v in inputs.items()}
            fixed_out = {name: cp.empty(shape.output_shapes[name], dtype) for name, _, dtype in self._outputs}
        binding = shape.session.io_binding()
        for name, arr in fixed_in.items():
            binding.bind_input(name, "cuda", device, arr.dtype, list(arr.shape), arr.data.ptr)
        for name, arr in fixed_out.items():
            binding.bind_output(name, "cuda", device, arr.dtype, list(arr.shape), arr.data.ptr)
        try:
            graph = capture(shape.stream.ptr, partial(shape.session.run_with_iobinding, binding,
                                                      self._unsynchronised))
        except GraphCaptureError as exc:
            shape.refused = str(exc)
            log.info("%s runs input shape %s without a CUDA graph: %s", self.model.spec.name,
                     [list(v.shape) for v in inputs.values()], exc)
            return
        shape.inputs, shape.outputs, shape.graph = fixed_in, fixed_out, graph
        log.debug("%s: input shape %s recorded as a CUDA graph (%s)", self.model.spec.name,
                  [list(v.shape) for v in inputs.values()], dict(graph.nodes))

    def _replay(self, shape: ShapeSession, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """A run of `shape` (its lock held) as its graph's replay on the model's stream, after the caller's work:
        inputs copied into the graph's buffers, outputs copied out into arrays of the caller's stream, which waits
        for them. Returns once queued: the host has nothing to wait for between runs (each replay's copies
        follow the one before on the model's stream, so the next replay cannot overwrite buffers still read)."""
        cp = cupy_module()
        graph = shape.graph
        if cp is None or graph is None:
            raise RuntimeUnavailable("a CUDA graph replay needs CuPy and a recorded graph")
        caller = cp.cuda.get_current_stream()
        # allocated on the caller's stream, which frees them after its own use of them
        outputs = {name: cp.empty_like(shape.outputs[name]) for name, _, _ in self._outputs}
        for name, value in inputs.items():
            if np.dtype(value.dtype) != shape.inputs[name].dtype:
                raise ValueError(f"{self.model.spec.name}: input {name} is {np.dtype(value.dtype)}, "
                                 f"not {shape.inputs[name].dtype}")
        self.stream.wait_event(caller.record())
        try:
            with self.stream:
                for name, value in inputs.items():
                    cp.copyto(shape.inputs[name], cp.asarray(value))
                graph.launch(self.stream.ptr)
                for name, out in outputs.items():
                    cp.copyto(out, shape.outputs[name])
        finally:  # whatever was queued, the caller's stream (which frees the inputs and outputs) waits for it
            replayed = self.stream.record()
            caller.wait_event(replayed)
            # a shape let go meanwhile (evicted, or taken over by a faster session) keeps its session, graph and
            # buffers until its replays are done
            IN_FLIGHT.hold(replayed, shape)
        return outputs

    def _run_cuda(self, shape: ShapeSession, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """A run of `shape`'s session on its own stream, after the caller's work; returns when the outputs are
        ready, counted in `shape.runs` (the first run's output shapes kept for the graph's buffers)."""
        cp = cupy_module()
        if cp is None:  # checked in __init__; keeps the type checker honest
            raise RuntimeUnavailable("CuPy is not available")
        session = shape.session
        binding = session.io_binding()
        batch = 0
        keep_alive = []
        for name, value in inputs.items():
            arr = cp.ascontiguousarray(cp.asarray(value))
            keep_alive.append(arr)
            batch = int(arr.shape[0])
            binding.bind_input(name, "cuda", cp.cuda.runtime.getDevice(), arr.dtype, list(arr.shape), arr.data.ptr)
        # Inputs come from kernels on the caller's stream (their copies above included), and the outputs' memory
        # from the caller's stream's pool (freed there by work that may still be queued): order the session's
        # stream after it.
        caller = cp.cuda.get_current_stream()
        shape.stream.wait_event(caller.record())
        outputs: dict[str, Array] = {}
        allocated_by_ort = []
        for name, declared, dtype in self._outputs:
            if any(not isinstance(d, int) for d in declared[1:]):
                # Sized by the input (a detector's anchors grow with the image): ONNX Runtime allocates it.
                binding.bind_output(name, "cuda", cp.cuda.runtime.getDevice())
                allocated_by_ort.append((name, dtype))
                continue
            dims = [batch if not isinstance(d, int) else d for d in declared]
            out = cp.empty(dims, dtype=dtype)
            outputs[name] = out
            binding.bind_output(name, "cuda", cp.cuda.runtime.getDevice(), dtype, dims, out.data.ptr)
        if shape.runs:
            session.run_with_iobinding(binding)
        else:  # the first run sets the shape's convolutions up (cuDNN), which may synchronise the device
            with CAPTURE_GATE.apart():
                session.run_with_iobinding(binding)
        if allocated_by_ort:
            values = dict(zip((name for name, _, _ in self._outputs), binding.get_outputs(), strict=True))
            for name, dtype in allocated_by_ort:
                value = values[name]
                dims_out = tuple(value.shape())
                nbytes = int(np.prod(dims_out)) * np.dtype(dtype).itemsize
                # The CuPy array keeps ONNX Runtime's buffer (the OrtValue) alive as the memory's owner.
                memory = cp.cuda.UnownedMemory(value.data_ptr(), nbytes, value)
                outputs[name] = cp.ndarray(dims_out, dtype=dtype, memptr=cp.cuda.MemoryPointer(memory, 0))
        if not shape.output_shapes:
            shape.output_shapes = {name: tuple(int(d) for d in out.shape) for name, out in outputs.items()}
        shape.runs += 1
        return outputs
