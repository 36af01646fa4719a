"""CUDA streams lent out and taken back, so that a long run uses a fixed set of them; and CUDA work run
side by side in threads on the caller's device.

CuPy's memory pool keeps freed blocks per stream: memory freed by work on one stream is reused only
by later allocations on that same stream. A fresh stream for every video (or every thread) therefore
grows the pool by each video's buffers until an allocation fails and CuPy empties its cache (a soak run
on an H100 climbed to 67 GiB that way). Reusing streams keeps the pool at what the work in flight needs,
provided a stream keeps one kind of work: decoders and model steps borrow from separate pools, because a
stream that served a decoder and later a model step keeps both kinds of blocks, and as decoders come and go
every stream would in time cache a whole step's buffers.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engines.arrays import cupy_module
from engines.cuda_graphs import CAPTURE_GATE


class StreamPool:
    """Non-blocking CUDA streams; `lend()` makes one current for a block and takes it back after."""

    def __init__(self) -> None:
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.created = 0

    def take(self) -> Any:
        """A stream for as long as the caller needs it; hand it back with `give`."""
        cp = cupy_module()
        if cp is None:
            raise RuntimeError("CUDA streams need CuPy and a GPU")
        with self._lock:
            if self._free:
                return self._free.pop()
            self.created += 1
        return cp.cuda.Stream(non_blocking=True)

    def give(self, stream: Any) -> None:
        with self._lock:
            self._free.append(stream)

    @contextlib.contextmanager
    def lend(self) -> Iterator[Any]:
        """A stream, current for the block; taken back once the work queued on it is done (also when the block
        raised: nothing the block's work reads is let go while it runs)."""
        stream = self.take()
        try:
            with stream:
                yield stream
        finally:
            try:
                stream.synchronize()
            finally:  # a stream whose work failed still goes back
                self.give(stream)


STREAMS = StreamPool()
"""The process's pool for model work: the pipeline's model threads borrow from it, a step at a time."""
DECODER_STREAMS = StreamPool()
"""The process's pool for NVDEC decoders, each of which holds its stream for as long as the decoder lives."""


def side_by_side(calls: Sequence[Callable[[], object]], name: str) -> None:
    """Run the calls at once, one thread each, on the calling thread's CUDA device (a new thread starts on
    device 0); returns when all have returned, raising the first error. For host-bound work that releases
    the GIL, like a runtime's first run of a new input shape."""
    cp = cupy_module()
    device = cp.cuda.Device() if cp is not None else contextlib.nullcontext()

    def run(call: Callable[[], object]) -> None:
        with device:
            call()

    with ThreadPoolExecutor(max(1, len(calls)), thread_name_prefix=name) as pool:
        list(pool.map(run, calls))


class InFlight:
    """Objects that queued GPU work still reads or writes (a pinned buffer a copy lands in, the arrays a kernel
    reads, a CUDA graph's session and buffers), each held until the event recorded after that work has
    happened. Checked without waiting whenever more is held: memory let go while its work is queued would go
    back to a pool that could hand it out again (CuPy's pinned pool knows no streams), and waiting for the
    event instead from a finalizer would call CUDA from the garbage collector or at interpreter exit. Objects
    marked `retired` (sessions let go) are dropped apart from CUDA graph captures (engines.cuda_graphs)."""

    def __init__(self) -> None:
        self._held: deque[tuple[Any, tuple[object, ...]]] = deque()
        self._lock = threading.Lock()

    def hold(self, event: Any, *objects: object) -> None:
        done = []
        with self._lock:
            # oldest first; events of other streams may happen out of order and are let go a little later
            while self._held and self._held[0][0].done:
                done.append(self._held.popleft())
            self._held.append((event, objects))
        if any(getattr(o, "retired", False) for _, held in done for o in held):
            # a session its table let go: releasing its memory may synchronise the device
            with CAPTURE_GATE.apart():
                done.clear()

    def __len__(self) -> int:
        return len(self._held)


IN_FLIGHT = InFlight()
"""The process's objects held for queued GPU work."""
