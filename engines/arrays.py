"""Array-module helpers: one code path for numpy (host) and CuPy (GPU) arrays."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

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


def padded_batch(n: int, limit: int, smallest: int = 8) -> int:
    """The batch size n is padded to on a GPU: the next power of two from `smallest`, at most `limit`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, limit) if n <= limit else n
