"""Python's fatal-error report for a vidx process: where every thread was when a library crashed it.

The decoders and runtimes are C and C++ libraries; a crash inside one (SIGSEGV, SIGABRT) ends the process
without a Python traceback. With faulthandler on, Python writes the signal and every thread's Python stack
first, and `kill -USR1 PID` writes the stacks of a process that looks stuck (where is a job waiting?).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from typing import TextIO


def report_crashes(to: TextIO | int | None = None, *, stacks_on_usr1: bool = True) -> bool:
    """Turns the report on for this process, written to `to` (a file or a file descriptor; default stderr);
    with `stacks_on_usr1`, SIGUSR1 writes every thread's stack too (not in processes whose signals belong to
    another runtime). Returns False where there is nowhere to write (a process without stderr)."""
    target = sys.stderr if to is None else to
    try:
        faulthandler.enable(target, all_threads=True)
        if stacks_on_usr1 and hasattr(signal, "SIGUSR1"):
            faulthandler.register(signal.SIGUSR1, target, all_threads=True)
    except (RuntimeError, ValueError, OSError, AttributeError):  # no stderr (None), or one without a descriptor
        return False
    return True
