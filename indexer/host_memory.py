"""Host memory of a worker process: how many malloc arenas glibc may create.

glibc gives each thread that allocates while the others hold their arenas a new arena, up to 8 per core
(128 on a 16-core GPU host). A worker runs a dozen or more decoder threads plus the runtimes' own, each
allocating and freeing packets and host buffers of many sizes: every arena keeps its own free pages, and
the process's resident memory climbs for minutes before it levels off. On an H200 over 10 minutes of the
GPU pipeline (docs/performance.md, "GPU at steady state"), RSS went from 3.9 to 5.9 GiB with glibc's default
and levelled off at 3.8 GiB with two arenas; frame rates within 3% of each other (passes vary by +-10%), Python's own
object count flat in both.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MALLOC_ARENAS = 2
"""Arenas a worker process allows itself unless MALLOC_ARENA_MAX says otherwise: the setting measured flat
over minutes. It may cost ~2.5% of frame rate; 8 looked free and nearly as flat over 100 s (docs/performance.md,
"GPU at steady state"), and is the next candidate."""
_M_ARENA_MAX = -8  # <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> int | None:
    """Caps glibc's malloc arenas for this process from now on; call it before the process starts threads.

    Returns the cap in effect: MALLOC_ARENA_MAX's value when the environment sets it (glibc applied it at
    start, and it is left alone), else `arenas`; None where the C library is not glibc. Too late in a
    process that already made more than 8 arenas: glibc fixes its limit then and ignores this. In a Ray
    worker, ~22 threads run before an actor's constructor and the cap set there leaves 16 arenas (2 cores), so
    processes that another program starts get the cap from their environment instead (`arena_env`).
    """
    if platform.libc_ver()[0] != "glibc":
        return None
    if configured := os.environ.get("MALLOC_ARENA_MAX", "").strip():
        return int(configured) if configured.isdigit() else None
    if ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas) != 1:
        log.warning("mallopt(M_ARENA_MAX, %d) failed; host memory may grow with the decoder threads", arenas)
        return None
    return arenas


def arena_env() -> dict[str, str]:
    """Environment variables that cap the malloc arenas of a worker process from its first allocation: for
    the processes Ray starts (an explicit MALLOC_ARENA_MAX here is passed on as it is)."""
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "").strip() or str(MALLOC_ARENAS)}
