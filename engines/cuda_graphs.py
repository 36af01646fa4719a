"""CUDA graphs recorded from a stream: what a runtime enqueues for one run, replayed later as one launch.

A model run of ONNX Runtime's CUDA provider launches dozens of small kernels, each costing the host ~10 us.
Recorded once per input shape, a run replays as one graph launch (on an H100 the every-frame pipeline gained
3-5%: docs/performance.md, "Where GPU time goes").

Capture uses the driver API in CUDA's relaxed mode: the capturing thread and every other thread go on making
CUDA calls (an allocation, a synchronous copy) while it records. (ONNX Runtime's own graph option captures
in the global mode, in which such a call from any other thread, a decoder's or a second model thread's, fails
while a capture is under way.) Calls that may synchronise the whole device (sessions and decoders set up or
let go) are kept apart from captures by `CAPTURE_GATE`. What a stream records is whatever is enqueued on it
during the capture, from any thread: the caller keeps other work off the stream meanwhile.

A graph is refused (`GraphCaptureError`) when the recorded work cannot be replayed faithfully: the stream was
synchronised or read back to the host inside (the capture is invalidated), or it holds host callbacks (a
replay would call them again). The caller then runs the work as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator

CAPTURE_MODE_RELAXED = 2
"""CU_STREAM_CAPTURE_MODE_RELAXED."""

NODE_TYPES = {0: "kernel", 1: "memcpy", 2: "memset", 3: "host", 4: "graph", 5: "empty", 6: "wait_event",
              7: "event_record", 8: "semaphore_signal", 9: "semaphore_wait", 10: "mem_alloc", 11: "mem_free",
              12: "batch_memop", 13: "conditional"}
"""CUgraphNodeType values, by name."""

REFUSED_NODES = frozenset({"host", "mem_alloc", "mem_free", "semaphore_signal", "semaphore_wait"})
"""Nodes a graph replayed as a model run must not hold: host callbacks (ONNX Runtime releases host buffers
in them: a replay would release them again), copies from or to host memory (counted as "host": those
buffers may be released), and allocations made inside the capture."""


class GraphCaptureError(RuntimeError):
    """The work enqueued on a stream could not be recorded as a graph to replay (the reason says why)."""


class CaptureGate:
    """Keeps graph captures apart from work that may synchronise the whole device.

    Relaxed capture lets other threads go on with their CUDA calls, but a call that synchronises the device
    or the context while any stream is capturing fails (CUDA error 900). In a library's C++ code that cannot
    pass the error on (a decoder set up inside a parser callback, a destructor) that ends the process. Such
    work runs inside `apart()`: it waits for the captures under way, and none starts until it is done. A
    capture asked for meanwhile is not made (`capturing()` yields False): the caller runs as before and
    records at a later run. With `enabled` False (measurements only) the gate lets everything through."""

    def __init__(self) -> None:
        self.enabled = True
        self._cond = threading.Condition()
        self._captures = 0
        self._apart = 0
        """Device-wide work under way or waiting for the captures to end."""
        self._here = threading.local()
        self.postponed = 0
        """Captures not made because device-wide work was under way."""

    @contextlib.contextmanager
    def apart(self) -> Iterator[None]:
        """Runs the block with no capture under way (waits for those that are; captures are milliseconds)."""
        if not self.enabled:
            yield
            return
        if getattr(self._here, "capturing", False):  # it would wait for itself
            raise RuntimeError("device-wide work asked for inside a CUDA graph capture")
        try:
            with self._cond:
                self._apart += 1
                self._cond.wait_for(lambda: self._captures == 0)
            yield
        finally:
            with self._cond:
                self._apart -= 1

    @contextlib.contextmanager
    def capturing(self) -> Iterator[bool]:
        """Whether a capture may be made now (then none of `apart`'s work starts until the block ends)."""
        with self._cond:
            allowed = not self.enabled or self._apart == 0
            if allowed:
                self._captures += 1
            else:
                self.postponed += 1
        self._here.capturing = allowed
        try:
            yield allowed
        finally:
            self._here.capturing = False
            if allowed:
                with self._cond:
                    self._captures -= 1
                    self._cond.notify_all()


CAPTURE_GATE = CaptureGate()
"""The process's gate: graph captures on one side; CUDA sessions and NVDEC decoders set up or let go on the
other."""


def _handle(value: int | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(value or None)


@functools.cache
def _driver() -> ctypes.CDLL:
    """libcuda's graph and capture entry points, typed. Raises GraphCaptureError without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise GraphCaptureError(f"the CUDA driver library cannot be loaded: {exc}") from exc
    ptr, size, u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ulonglong
    signatures: dict[str, list[object]] = {
        "cuStreamBeginCapture_v2": [ptr, ctypes.c_int],
        "cuStreamEndCapture": [ptr, ctypes.POINTER(ptr)],
        "cuGraphGetNodes": [ptr, ctypes.POINTER(ptr), ctypes.POINTER(size)],
        "cuGraphNodeGetType": [ptr, ctypes.POINTER(ctypes.c_int)],
        "cuGraphInstantiateWithFlags": [ctypes.POINTER(ptr), ptr, u64],
        "cuGraphLaunch": [ptr, ptr],
        "cuGraphExecDestroy": [ptr],
        "cuGraphDestroy": [ptr],
        "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "cuGraphMemcpyNodeGetParams": [ptr, ptr],
        "cuGraphChildGraphNodeGetGraph": [ptr, ctypes.POINTER(ptr)],
        "cuPointerGetAttribute": [ptr, ctypes.c_int, ctypes.c_uint64],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    return lib


def _check(result: int, what: str) -> None:
    if result == 0:
        return
    name = ctypes.c_char_p()
    _driver().cuGetErrorName(result, ctypes.byref(name))
    raise GraphCaptureError(f"{what}: {(name.value or b'CUDA error').decode()} ({result})")


class CapturedGraph:
    """An instantiated CUDA graph; `launch` enqueues all of it on a stream. Destroyed with the object."""

    def __init__(self, exec_handle: int, nodes: Counter[str]):
        self._exec = exec_handle
        self.nodes = nodes
        """Its nodes by type (kernel, memcpy, memset...)."""
        self._lock = threading.Lock()

    def launch(self, stream_ptr: int) -> None:
        with self._lock:
            if not self._exec:
                raise GraphCaptureError("the graph was destroyed")
            _check(_driver().cuGraphLaunch(_handle(self._exec), _handle(stream_ptr)), "launching a CUDA graph")

    def close(self) -> None:
        with self._lock:
            handle, self._exec = self._exec, 0
        if handle:
            _driver().cuGraphExecDestroy(_handle(handle))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the driver library may be gone already
            self.close()


def capture(stream_ptr: int, work: Callable[[], object]) -> CapturedGraph:
    """Records what `work` enqueues on the stream (nothing of it runs) and instantiates it. The stream must not
    be capturing already; raises GraphCaptureError when the work cannot be recorded or replayed (see the
    module's docstring). The stream is back to normal afterwards, whatever happened."""
    lib = _driver()
    stream = _handle(stream_ptr)
    _check(lib.cuStreamBeginCapture_v2(stream, CAPTURE_MODE_RELAXED), "beginning a stream capture")
    graph = ctypes.c_void_p()
    try:
        try:
            work()
        finally:  # ended whatever happened inside, an interrupt included
            ended = lib.cuStreamEndCapture(stream, ctypes.byref(graph))
    except Exception as exc:
        if graph.value:
            lib.cuGraphDestroy(graph)
        raise GraphCaptureError(f"the work failed while recorded: {exc}") from exc
    try:
        _check(ended, "ending the stream capture")
        if not graph.value:
            raise GraphCaptureError("the capture recorded no graph")
        nodes = _node_types(graph.value)
        refused = sorted(set(nodes) & REFUSED_NODES)
        if refused:
            raise GraphCaptureError(f"the recorded work holds {', '.join(refused)} nodes")
        exec_handle = ctypes.c_void_p()
        _check(lib.cuGraphInstantiateWithFlags(ctypes.byref(exec_handle), graph, 0), "instantiating the graph")
        return CapturedGraph(int(exec_handle.value or 0), nodes)
    finally:
        if graph.value:
            lib.cuGraphDestroy(graph)


class _Memcpy3D(ctypes.Structure):
    """CUDA_MEMCPY3D: the parameters of a memcpy node."""

    _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcZ", ctypes.c_size_t),
                ("srcLOD", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int), ("srcHost", ctypes.c_void_p),
                ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p), ("reserved0", ctypes.c_void_p),
                ("srcPitch", ctypes.c_size_t), ("srcHeight", ctypes.c_size_t),
                ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstZ", ctypes.c_size_t),
                ("dstLOD", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int), ("dstHost", ctypes.c_void_p),
                ("dstDevice", ctypes.c_uint64), ("dstArray", ctypes.c_void_p), ("reserved1", ctypes.c_void_p),
                ("dstPitch", ctypes.c_size_t), ("dstHeight", ctypes.c_size_t),
                ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t), ("Depth", ctypes.c_size_t)]


MEMORY_HOST, MEMORY_UNIFIED = 1, 4
"""CUmemorytype values: host memory, and a unified address (host or device; asked of the driver)."""


def _touches_host(node: int) -> bool:
    """Whether a memcpy node reads or writes host memory: a replay would use host buffers the runtime that
    recorded it may since have released."""
    lib = _driver()
    params = _Memcpy3D()
    _check(lib.cuGraphMemcpyNodeGetParams(_handle(node), ctypes.byref(params)), "reading a memcpy node")
    for kind, address in ((params.srcMemoryType, params.srcDevice), (params.dstMemoryType, params.dstDevice)):
        if kind == MEMORY_HOST:
            return True
        if kind == MEMORY_UNIFIED:
            where = ctypes.c_int(0)
            lib.cuPointerGetAttribute(ctypes.byref(where), 2, ctypes.c_uint64(address))  # MEMORY_TYPE
            if where.value == MEMORY_HOST:
                return True
    return False


def _node_types(graph: int) -> Counter[str]:
    """The graph's nodes by type, a child graph's counted in; memcpy nodes touching host memory count as
    "host" (refused)."""
    lib = _driver()
    count = ctypes.c_size_t(0)
    _check(lib.cuGraphGetNodes(_handle(graph), None, ctypes.byref(count)), "counting the graph's nodes")
    nodes = (ctypes.c_void_p * count.value)()
    _check(lib.cuGraphGetNodes(_handle(graph), nodes, ctypes.byref(count)), "listing the graph's nodes")
    types: Counter[str] = Counter()
    kind = ctypes.c_int()
    for node in nodes[:count.value]:
        _check(lib.cuGraphNodeGetType(_handle(node), ctypes.byref(kind)), "reading a node's type")
        name = NODE_TYPES.get(kind.value, f"type {kind.value}")
        if name == "graph":
            child = ctypes.c_void_p()
            _check(lib.cuGraphChildGraphNodeGetGraph(_handle(node), ctypes.byref(child)), "reading a child graph")
            types.update(_node_types(int(child.value or 0)))
            continue
        if name == "memcpy" and _touches_host(int(node or 0)):
            name = "host"
        types[name] += 1
    return types
