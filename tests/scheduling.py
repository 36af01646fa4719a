"""This thread's scheduling policy, and putting it back: threads started later inherit it.

SVT-AV1 (libsvtav1), run as root as CI does, switches the calling thread to SCHED_FIFO at priority 99
and leaves it so. Every thread started afterwards inherits that, and the rest of the test session ran
real-time: a busy thread is never preempted by its peers, so on 2 cores the two-drivers test took
minutes instead of seconds, the whole suite 7.5 minutes instead of 2.5, and a driver's heartbeat thread
could be starved past the 30 s after which its job looked dead (docs/jobs.md, "Several drivers at once").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

Scheduling = tuple[int, int] | None


def scheduling() -> Scheduling:
    """This thread's scheduling policy and priority (None where the OS does not say)."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


def restore(before: Scheduling) -> None:
    """Put this thread's scheduling back to `before` when something changed it."""
    if before is not None and scheduling() != before:
        os.sched_setscheduler(0, before[0], os.sched_param(before[1]))


@contextmanager
def scheduling_kept() -> Iterator[None]:
    """Whatever runs inside (an encoder) leaves this thread's scheduling as it found it."""
    before = scheduling()
    try:
        yield
    finally:
        restore(before)
