"""Array-module helpers: one code path for numpy (host) and CuPy (GPU) arrays."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType
from typing import Any, cast

import numpy as np

Array = Any
"""A numpy or CuPy ndarray. (CuPy has no type stubs; the array module says which one it is.)"""


@functools.cache
def cupy_module() -> ModuleType | None:
    """CuPy if it imports and sees a GPU, else None."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # CUDA driver missing or broken: CuPy imports but cannot run
        return None
    return cupy


def require_cupy() -> ModuleType:
    """CuPy, for code that only runs on the GPU path (which is chosen only when cupy_module() found a GPU)."""
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("the GPU path was entered without a usable CuPy and CUDA device")
    return cp


def array_module(x: Array) -> ModuleType:
    """numpy for host arrays, cupy for device arrays."""
    if isinstance(x, np.ndarray):
        return np
    cp = cupy_module()
    if cp is not None and isinstance(x, cp.ndarray):
        return cp
    raise TypeError(f"expected a numpy or cupy array, got {type(x).__name__}")


def is_device(x: Array) -> bool:
    return array_module(x) is not np


def to_host(x: Array) -> np.ndarray:
    """A numpy copy of x (no copy when x is already on the host)."""
    if isinstance(x, np.ndarray):
        return x
    return x.get()


Region = tuple[Array, int, int, int, int]
"""(image, y0, y1, x0, x1): a rectangle of an H x W (x C ...) image, rows y0..y1-1 and columns x0..x1-1."""


def regions_to_host(regions: Sequence[Region]) -> list[np.ndarray]:
    """Each rectangle as a contiguous host array, in order.

    On a GPU the rectangles are copied by the copy engine alone, one 2-D copy each (no kernel: a kernel queued
    while the models' kernels fill the GPU waits for room on it), into one pinned buffer on the current stream,
    with one wait for them all; the arrays returned are plain numpy copies of it. On the host, each is copied.
    """
    out: list[np.ndarray | None] = [None] * len(regions)
    on_device = []
    for n, (image, y0, y1, x0, x1) in enumerate(regions):
        if not 0 <= y0 < y1 <= image.shape[0] or not 0 <= x0 < x1 <= image.shape[1]:
            raise ValueError(f"rectangle rows {y0}:{y1}, columns {x0}:{x1} is not inside an image of {image.shape}")
        if isinstance(image, np.ndarray):
            out[n] = image[y0:y1, x0:x1].copy()  # a copy always: a view would keep the whole image
        else:
            on_device.append(n)
    if on_device:
        for n, host in zip(on_device, _device_regions_to_host([regions[n] for n in on_device]), strict=True):
            out[n] = host
    return cast(list[np.ndarray], out)


def _device_regions_to_host(regions: Sequence[Region]) -> list[np.ndarray]:
    cp = require_cupy()
    stream = cp.cuda.get_current_stream()
    kept = []  # contiguous copies of images a 2-D copy cannot read as they are (rows backwards, pixels apart)
    plans = []
    for image, y0, y1, x0, x1 in regions:
        pixel = image.itemsize * int(np.prod(image.shape[2:], dtype=np.int64))
        if image.strides[0] < image.shape[1] * pixel or image.strides[1] != pixel or not image[0, 0].flags.c_contiguous:
            image = cp.ascontiguousarray(image)
            kept.append(image)
        plans.append((image, image.data.ptr + y0 * image.strides[0] + x0 * pixel, (x1 - x0) * pixel, y1 - y0))
    total = sum(row * rows for _, _, row, rows in plans)
    memory = cp.cuda.alloc_pinned_memory(total)
    host = np.frombuffer(memory, np.uint8, total)
    offset = 0
    for image, source, row, rows in plans:
        cp.cuda.runtime.memcpy2DAsync(host.ctypes.data + offset, row, source, image.strides[0], row, rows,
                                      cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        offset += row * rows
    stream.synchronize()
    out, offset = [], 0
    for (image, y0, y1, x0, x1), (_, _, row, rows) in zip(regions, plans, strict=True):
        part = host[offset:offset + row * rows].view(image.dtype)
        out.append(part.reshape((y1 - y0, x1 - x0, *image.shape[2:])).copy())  # the pinned buffer goes back
        offset += row * rows
    del kept
    return out


def padded_batch(n: int, limit: int, smallest: int = 8) -> int:
    """The batch size n is padded to on a GPU: the next power of two from `smallest`, at most `limit`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, limit) if n <= limit else n
