"""A vidx process's fatal-error report: every thread's stack on a crash or on SIGUSR1, and no failure where the
process has no stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter that leaves no core file (run in `cwd`, core dumps off)."""
    no_core = "import resource\nresource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    return subprocess.run([sys.executable, "-c", no_core + code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=cwd)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_usr1_writes_every_threads_stack_and_the_process_goes_on(tmp_path: Path) -> None:
    done = run_python(
        "import os, signal, threading, time\n"
        "from indexer.crash_reports import report_crashes\n"
        "assert report_crashes()\n"
        "started = threading.Event()\n"
        "def waiting_decoder():\n"
        "    started.set()\n"
        "    time.sleep(5)\n"
        "threading.Thread(target=waiting_decoder, daemon=True).start()\n"
        "started.wait(10)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "time.sleep(0.2)\n"
        "print('still here')\n", tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "still here", done.stderr
    assert "in waiting_decoder" in done.stderr and "Current thread" in done.stderr, done.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_without_usr1_stacks_the_signal_keeps_its_own_meaning(tmp_path: Path) -> None:
    """A process whose signals belong to another runtime (a Ray actor's) leaves SIGUSR1 alone."""
    done = run_python("import os, signal, time\nfrom indexer.crash_reports import report_crashes\n"
                      "assert report_crashes(stacks_on_usr1=False)\nos.kill(os.getpid(), signal.SIGUSR1)\n"
                      "time.sleep(5)\n", tmp_path)
    assert done.returncode == -signal.SIGUSR1, (done.returncode, done.stderr)


def test_a_crash_reports_the_signal_and_where_the_thread_was_into_the_given_descriptor(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    done = run_python(
        "import ctypes, os\n"
        "from indexer.crash_reports import report_crashes\n"
        f"fd = os.open({str(report)!r}, os.O_WRONLY | os.O_CREAT)\n"
        "assert report_crashes(fd, stacks_on_usr1=False)\n"
        "def in_a_library():\n"
        "    ctypes.string_at(0)\n"
        "in_a_library()\n", tmp_path)
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stderr)
    text = report.read_text()
    assert "Fatal Python error: Segmentation fault" in text and "in in_a_library" in text, text
    assert "Current thread" in text, text  # every thread's stack: the form jobs.processes.last_words reads


def test_a_process_without_stderr_starts_without_a_report(tmp_path: Path) -> None:
    done = run_python("import sys\nfrom indexer.crash_reports import report_crashes\nsys.stderr = None\n"
                      "print(report_crashes())\n", tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
