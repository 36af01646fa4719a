"""Worker processes on this machine, without Ray: the default of `vidx index` on a GPU.

The threads of one GPU process slow each other (decoders beside the model threads, tracking between
steps) and the GPU is idle most of the time (docs/performance.md, "Where GPU time goes"). Two worker
processes per GPU each run a VideoWorker (engines, decoders, several videos in flight) and share the GPU
between them. The driver stays the only writer of the SQL index: it claims videos for the workers, hands
them over a queue, and records the outcomes they send back.

A worker process that dies (a decoder crash, out of memory, killed) takes only its own videos with it: each
is tried again, alone on a fresh worker, until its attempts run out, while the other workers go on. So does
a video whose decoder hangs: each worker says every second how long each of its videos has gone without a
decoded batch, and a worker with a video stalled past the stall timeout (or silent that long: a hang that
holds the interpreter) is stopped and replaced.

Each worker's stderr and stdout come to the driver through a pipe: passed on to the driver's stderr as they
come (its stdout stays the command's own, `--json`), their end kept, so that a worker that dies is named in the
job's summary with what it said last (Python's fatal-error report, which every worker process enables, and the
lines before it: a library's own message).
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog import job_state as state
from indexer.crash_reports import report_crashes
from indexer.host_memory import arena_env
from jobs.runner import Executor, LocalExecutor, TaskHooks
from jobs.worker import TaskSpec
from schemas.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_STALL_TIMEOUT_S, DEFAULT_WORKERS_PER_GPU, IndexSettings
from schemas.errors import VidxError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 900.0
"""How long a worker may take to load and warm up its engines (a first run may convert models)."""
PROGRESS_EVERY_S = 0.5
"""A worker reports how far into each video it got at most this often."""
BEAT_S = 1.0
"""A worker says how long each of its videos has gone without a decoded batch this often."""
POLL_S = 0.2
MAX_FAILED_STARTS = 2
"""A worker that dies this many times in a row before its engines are loaded stops the job (it would again)."""
TAIL_BYTES = 16384
"""How much of a worker process's latest output the driver keeps, to say what a worker that died said last."""
FATAL_REPORT = b"Fatal Python error:"
"""The first line of Python's fatal-error report (faulthandler), which every worker process enables."""
REPORT_BYTES = 262144
"""How much of a fatal-error report the driver keeps: every thread's stack of a GPU worker can pass TAIL_BYTES."""
REPORT_LEAD = 4096
"""How much output before a fatal-error report is kept with it (where a C++ library says why it aborted)."""
DRAIN_S = 2.0
"""How long the driver waits for the rest of a dead worker's output (a process it started may hold the pipe)."""


class WorkerStartError(VidxError):
    """A worker process could not load its engines or died while starting."""


@dataclass
class _Worker:
    label: str
    gpu: str | None
    token: str = ""
    """This process's name (the label and a generation), which its messages carry."""
    generation: int = 0
    failed_starts: int = 0
    process: Any = None
    tasks: Any = None
    messages: Any = None
    """The receiving end of this process's own pipe (None once it broke). One pipe per worker, not one queue
    for all: a worker killed while writing would leave a shared queue's lock held, and every other worker's
    messages stuck behind it."""
    output: WorkerOutput | None = None
    """This process's stderr and stdout, as the driver reads them."""
    name: str = ""
    """host:pid, as the worker names itself (claims and outcomes carry it)."""
    ready: bool = False
    heard: float = 0.0
    """When the driver last heard from this worker (time.monotonic)."""
    room: int = 1
    inflight: dict[int, tuple[TaskSpec, bool]] = field(default_factory=dict)
    """Videos handed over and not yet back, by video id, with whether each runs alone (a suspect)."""

    @property
    def isolated(self) -> bool:
        return any(alone for _, alone in self.inflight.values())


class WorkerOutput:
    """A worker process's stderr and stdout, read by a thread of the driver: passed on to the driver's stderr in
    whole lines as they come (where a progress display keeps them above itself), its latest TAIL_BYTES kept, and
    a fatal-error report kept from just before its first line (REPORT_BYTES: with every thread's stack it is
    often longer than the tail), for `last_words`."""

    def __init__(self, reader: Any):
        self._reader = reader
        self._tail = bytearray()
        self._report: bytearray | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="vidx-worker-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        pending = ""
        try:
            while data := os.read(self._reader.fileno(), 65536):
                self._keep(data)
                pending += decode(data)
                cut = pending.rfind("\n") + 1 if len(pending) < TAIL_BYTES else len(pending)
                if cut:
                    _forward(pending[:cut])
                    pending = pending[cut:]
        except OSError:
            pass
        finally:
            self._reader.close()
            if rest := pending + decode(b"", True):
                _forward(rest + "\n")

    def _keep(self, data: bytes) -> None:
        with self._lock:
            if self._report is not None:
                self._report += data[:max(0, REPORT_BYTES - len(self._report))]
            self._tail += data
            if self._report is None:
                at = self._tail.find(FATAL_REPORT, max(0, len(self._tail) - len(data) - len(FATAL_REPORT)))
                if at >= 0:  # from the start of a line up to REPORT_LEAD bytes before: a library's message
                    lead = max(0, at - REPORT_LEAD)
                    line = self._tail.find(b"\n", lead, at) if lead else -1
                    lead = line + 1 if line >= 0 else lead
                    self._report = self._tail[lead:lead + REPORT_BYTES]
            del self._tail[:-TAIL_BYTES]

    def wait(self, timeout: float = DRAIN_S) -> None:
        """Until the process's output has ended (all of it passed on) or `timeout` seconds have passed."""
        self._thread.join(timeout)

    def last_words(self, wait_s: float = DRAIN_S) -> str:
        """What the process said last (`last_words` of its fatal-error report, or else of its latest output),
        once its output has ended or after `wait_s`."""
        self.wait(wait_s)
        with self._lock:
            said = self._report if self._report is not None else self._tail
            return last_words(said.decode("utf-8", errors="replace"))


_FORWARDING = threading.Lock()
"""One worker's lines at a time on the driver's stderr: two workers' lines are never spliced together."""


def _forward(text: str) -> None:
    with _FORWARDING, contextlib.suppress(Exception):  # the driver's stderr closed: the output is still kept
        sys.stderr.write(text)


_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def last_words(output: str, limit: int = 500) -> str:
    """A process's last output in one line: Python's fatal-error report (faulthandler: the signal or error, and
    the innermost frame of the thread it hit, where that is a Python thread) with the two lines before it, which
    are where a C++ library says why it aborted ("terminate called after throwing ...", "what(): ..."); without
    such a report, its last three lines. Lines are joined with ' | ', at most `limit` characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    fatal = next((i for i, line in enumerate(lines) if line.startswith(FATAL_REPORT.decode())), None)
    if fatal is None:
        said = lines[-3:]
    else:
        said = lines[max(0, fatal - 2):fatal + 1]
        for i in range(fatal + 1, len(lines) - 1):
            if lines[i].startswith("Current thread") and (frame := _FRAME.search(lines[i + 1])):
                where = "/".join(Path(frame[1]).parts[-2:])
                said.append(f"in {frame[3]} ({where}:{frame[2]})")
                break
    words = " | ".join(said)
    return words if len(words) <= limit else words[:limit - 3] + "..."


def _worker_main(token: str, gpu: str | None, settings_json: str, out_uri: str, cache_dir: str | None,
                 in_flight: int | None, tasks: Any, pipe: Any, output: Any) -> None:
    """A worker process's body: engines loaded once, videos from `tasks` until None, messages into `pipe`,
    its stderr and stdout into `output`."""
    os.dup2(output.fileno(), 2)  # fd 2, where C++ libraries write their messages too
    os.dup2(output.fileno(), 1)  # and what a library prints: the driver's stdout is its own (`--json`)
    output.close()
    if sys.stdout is not None:  # a pipe now: line by line, so that nothing printed is held back by a crash
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    report_crashes(2)  # into the output the driver reads: every thread's stack on a crash or `kill -USR1 PID`
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it requeues and stops the workers
    if gpu is not None:  # before anything touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    from jobs.worker import VideoWorker

    lock = threading.Lock()  # the main thread and the beat write to one pipe

    def send(*msg: Any) -> None:
        with lock:
            pipe.send((msg[0], token, *msg[1:]))

    try:
        worker = VideoWorker(IndexSettings.from_json(settings_json), out_uri,
                             cache_dir=Path(cache_dir) if cache_dir else None, in_flight=in_flight)
    except BaseException as exc:
        send("failed", f"{type(exc).__name__}: {exc}")
        return
    send("ready", worker.describe())
    reported: dict[int, float] = {}
    driver = os.getppid()

    def beat() -> None:
        while True:
            time.sleep(BEAT_S)
            if os.getppid() != driver:  # the driver was killed: nobody will claim for or hear from this worker
                os._exit(1)
            try:
                send("stalls", worker.stalled_for())
            except OSError:  # the driver's end of the pipe is gone
                os._exit(1)

    threading.Thread(target=beat, name="vidx-worker-beat", daemon=True).start()

    def feed() -> Iterator[TaskSpec | None]:
        while True:
            try:
                spec = tasks.get_nowait()
            except queue.Empty:
                yield None  # nothing now: the indexer asks again shortly
                continue
            if spec is None:
                return
            yield spec

    def progress(spec: TaskSpec, pts_s: float) -> None:
        now = time.monotonic()
        if now - reported.get(spec.video_id, 0.0) >= PROGRESS_EVERY_S:
            reported[spec.video_id] = now
            send("progress", spec, pts_s)

    for spec, outcome in worker.process_many(feed(), on_progress=progress):
        reported.pop(spec.video_id, None)
        send("done", spec, outcome)
    from engines.runtime.onnxruntime import SET_UP_BEHIND

    if SET_UP_BEHIND.pending():  # all is sent: a normal exit would first finish a faster session's set-up (seconds)
        # that nothing will use; leaving at once skips the libraries' teardown, which is what that wait protects
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(0)


class ProcessExecutor:
    """`processes` worker processes on this machine, each pinned to one of `gpus` (CUDA device ids; None: no
    GPU), `per_gpu` to a GPU in turn; up to `max_attempts` attempts per video whose worker dies or hangs for
    `stall_timeout_s`."""

    def __init__(self, processes: int, gpus: list[str] | None = None, *, per_gpu: int = 1,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
                 in_flight: int | None = None):
        if processes < 1:
            raise ValueError("at least one worker process")
        self.processes = processes
        self.gpus = gpus
        self.per_gpu = max(1, per_gpu)
        self.max_attempts = max_attempts
        self.stall_timeout_s = stall_timeout_s
        self.in_flight = in_flight
        """Videos at once per worker (None: the worker's default, 8 on a GPU)."""
        self.workers: list[_Worker] = []
        self.replaced = 0
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds threads or CUDA
        self._args: tuple[str, str, str | None, int | None] = ("", "", None, None)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]:
        self._args = (settings.to_json(), out_uri, str(cache_dir) if cache_dir else None, self.in_flight)
        self.workers = [_Worker(f"worker{i}", self.gpus[(i // self.per_gpu) % len(self.gpus)] if self.gpus else None)
                        for i in range(self.processes)]
        for w in self.workers:
            self._spawn(w)
        first: dict[str, str] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            for w, msg in self._messages():  # first, so that a worker's own reason wins over its exit code
                if msg[0] == "failed":
                    raise WorkerStartError(f"{w.label} could not load its engines: {msg[2]}")
                if msg[0] == "ready":
                    self._ready(w, msg[2])
                    first = first or msg[2]
            for w in self.workers:
                if not w.ready and w.process.exitcode is not None and w.messages is None:
                    code = w.process.exitcode
                    raise WorkerStartError(f"{w.label} exited with code {code}{_signal_name(code)} while loading its "
                                           f"engines{self._said(w)}")
            if time.monotonic() > deadline:
                raise WorkerStartError(f"workers not ready after {START_TIMEOUT_S:.0f} s")
        where = f", {self.per_gpu} per GPU on {len(self.gpus)} GPU(s)" if self.gpus else ""
        return {"executor": "local", "workers": f"{self.processes} processes{where}, "
                                                f"{first.get('in_flight', '?')} videos at once each",
                **{k: v for k, v in first.items() if k not in ("worker", "in_flight")}}

    def _spawn(self, w: _Worker) -> None:
        w.generation += 1
        w.token = f"{w.label}.{w.generation}"
        w.tasks = self._ctx.Queue()
        if w.messages is not None:
            w.messages.close()
        w.messages, pipe = self._ctx.Pipe(duplex=False)
        reader, output = self._ctx.Pipe(duplex=False)  # raw bytes: the child's stderr, not messages
        w.ready, w.name, w.heard = False, "", time.monotonic()
        w.inflight.clear()
        # The child's malloc arena cap must be in its environment from its first allocation (indexer/host_memory),
        # and its fatal-error report on from its first import (a crash while importing reports too).
        env = {**arena_env(), "PYTHONFAULTHANDLER": "1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        w.output = None
        try:
            w.process = self._ctx.Process(target=_worker_main, name=f"vidx-{w.label}", daemon=True,
                                          args=(w.token, w.gpu, *self._args, w.tasks, pipe, output))
            w.process.start()
            w.output = WorkerOutput(reader)
        except BaseException:
            reader.close()
            raise
        finally:
            pipe.close()  # the child's ends: once the child is gone, reading says so
            output.close()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _ready(self, w: _Worker, info: dict[str, str]) -> None:
        w.ready, w.name, w.failed_starts = True, info.get("worker", w.label), 0
        w.room = max(1, int(info.get("in_flight", "1")))

    def _messages(self, timeout: float = POLL_S) -> list[tuple[_Worker, tuple[Any, ...]]]:
        """What the workers sent: waits up to `timeout` for the first message, then takes all there is. A
        worker's pipe that breaks (the worker died mid-message) is dropped; its exit is handled elsewhere."""
        pipes = {id(w.messages): w for w in self.workers if w.messages is not None}
        out: list[tuple[_Worker, tuple[Any, ...]]] = []
        if not pipes:
            time.sleep(timeout)
            return out
        for ready in multiprocessing.connection.wait([w.messages for w in pipes.values()], timeout):
            w = pipes[id(ready)]
            conn = w.messages
            try:
                while conn.poll():
                    msg = conn.recv()
                    if msg[1] == w.token:
                        w.heard = time.monotonic()
                        out.append((w, msg))
            except (EOFError, OSError, pickle.UnpicklingError):
                conn.close()
                w.messages = None
        return out

    def close(self) -> None:
        """Idle workers are asked to exit; workers with videos in flight (the driver was interrupted or failed:
        those videos go back to the queue) are stopped at once."""
        for w in self.workers:
            if w.process is None:
                continue
            if w.inflight:
                w.process.terminate()
            else:
                with contextlib.suppress(Exception):
                    w.tasks.put(None)
        deadline = time.monotonic() + 10
        for w in self.workers:
            if w.process is not None:
                w.process.join(max(0.0, deadline - time.monotonic()))
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(5)
        for w in self.workers:  # the workers' last output passed on before the driver goes on
            if w.output is not None:
                w.output.wait(max(0.0, deadline + DRAIN_S - time.monotonic()))
        self.workers = []

    # ------------------------------------------------------------------------------------ running

    def run(self, hooks: TaskHooks) -> None:
        retries: list[tuple[TaskSpec, bool]] = []
        exhausted = False
        blocked_until = 0.0
        while True:
            stopping = hooks.should_stop()
            if not stopping:
                for w in self.workers:
                    while w.ready and len(w.inflight) < w.room and not w.isolated:
                        pick: tuple[TaskSpec, bool] | None = None
                        if retries:
                            if retries[0][1] and w.inflight:
                                break  # a suspect runs alone: on a worker with nothing else in flight
                            pick = retries.pop(0)
                        elif not exhausted and time.monotonic() >= blocked_until:
                            got = hooks.next_task(w.name)
                            if got is None:
                                exhausted = True
                            elif got == state.BLOCKED:
                                blocked_until = time.monotonic() + 0.5
                            elif isinstance(got, TaskSpec):
                                pick = (got, False)
                        if pick is None:
                            break
                        w.inflight[pick[0].video_id] = pick
                        w.tasks.put(pick[0])
            busy = any(w.inflight for w in self.workers)
            if not busy and (stopping or (exhausted and not retries)):
                return
            self._receive(hooks, retries)
            for w in self.workers:
                if w.process.exitcode is not None:
                    self._replace(w, retries, hooks)
                elif w.inflight and time.monotonic() - w.heard > self.stall_timeout_s:
                    # silent this long with videos in flight: a hang that holds the whole process
                    self._stop_hung(w, set(w.inflight), f"worker unresponsive for {self.stall_timeout_s:.0f} s "
                                                        f"(decoder hung); worker restarted", retries, hooks)

    def _receive(self, hooks: TaskHooks, retries: list[tuple[TaskSpec, bool]]) -> None:
        """Handle what the workers sent (waiting up to POLL_S for it)."""
        for w, msg in self._messages():
            kind, token = msg[0], msg[1]
            if token != w.token:  # sent by a worker since replaced
                continue
            if kind == "stalls":
                hung = {vid for vid, s in msg[2].items() if s > self.stall_timeout_s and vid in w.inflight}
                if hung:
                    self._stop_hung(w, hung, f"no progress for {self.stall_timeout_s:.0f} s (decoder hung); "
                                             f"worker restarted", retries, hooks)
            elif kind == "ready":
                self._ready(w, msg[2])
            elif kind == "failed":
                log.error("%s could not load its engines: %s", w.label, msg[2])
            elif kind == "progress":
                hooks.on_progress(msg[2], msg[3])
            elif kind == "done" and w.inflight.pop(msg[2].video_id, None) is not None:
                hooks.on_done(msg[2], msg[3])

    def _stop_hung(self, w: _Worker, hung: set[int], why: str, retries: list[tuple[TaskSpec, bool]],
                   hooks: TaskHooks) -> None:
        """Kill a worker over hung videos and start a fresh one: the hung videos use up an attempt, the others
        it had in flight go back without (they were only in the wrong process)."""
        log.warning("%s: %s", w.label, why)
        hooks.on_worker_replaced(f"{w.label} ({w.name}) stopped: {why}")
        lost, name = list(w.inflight.values()), w.name
        w.process.kill()
        w.process.join(10)
        self._spawn(w)
        self.replaced += 1
        for spec, _ in lost:
            if spec.video_id in hung:
                self._retry_or_fail(spec, why, name, retries, hooks)
            else:
                retries.append((spec, False))

    def _retry_or_fail(self, spec: TaskSpec, why: str, worker: str, retries: list[tuple[TaskSpec, bool]],
                       hooks: TaskHooks) -> None:
        again = hooks.next_attempt(spec, why, self.max_attempts, worker or None)
        if again is not None:
            retries.append((again, True))  # alone: it may be the culprit

    def _replace(self, w: _Worker, retries: list[tuple[TaskSpec, bool]], hooks: TaskHooks) -> None:
        """A worker process ended: its videos are tried again (each alone: the culprit is unknown), and a fresh
        worker takes its place."""
        code = w.process.exitcode
        said = self._said(w)
        if not w.ready:
            w.failed_starts += 1
            if w.failed_starts >= MAX_FAILED_STARTS:
                raise WorkerStartError(f"{w.label} died {w.failed_starts} times while loading its engines "
                                       f"(exit code {code}{_signal_name(code)}){said}")
        why = f"worker process died while indexing (exit code {code}: decoder crash, out of memory or killed)"
        lost = [spec for spec, _ in w.inflight.values()]
        died = (f"{w.label} ({w.name or 'starting'}) exited with code {code}{_signal_name(code)} "
                + (f"with {len(lost)} video{'s' if len(lost) != 1 else ''} in flight, tried again" if w.ready
                   else "while loading its engines") + said)
        log.warning("%s; replaced", died)
        hooks.on_worker_replaced(died)
        name = w.name
        self._spawn(w)
        for spec in lost:
            self._retry_or_fail(spec, why, name, retries, hooks)
        self.replaced += 1

    @staticmethod
    def _said(w: _Worker) -> str:
        """'; it said last: ...' for a worker process that ended (its output drained first), or nothing."""
        words = w.output.last_words() if w.output is not None else ""
        return f"; it said last: {words}" if words else ""


def _signal_name(code: int | None) -> str:
    """` (SIGSEGV)` for an exit code that says which signal ended a process (multiprocessing: minus its number)."""
    if code is None or code >= 0:
        return ""
    try:
        return f" ({signal.Signals(-code).name})"
    except ValueError:
        return ""


def local_gpus(device: str) -> list[str]:
    """The CUDA devices of this machine that `device` (a RuntimeConfig.device) would use, as ids to put in a
    worker's CUDA_VISIBLE_DEVICES (none for the CPU, or where no GPU is usable)."""
    if device == "cpu":
        return []
    from engines.runtime.base import runtime_report

    count = runtime_report().cuda_devices
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:count] if visible else [str(i) for i in range(count)]


class LocalWorkers:
    """The `local` executor: `workers_per_gpu` worker processes per GPU of this machine (or `workers` in all),
    or, on a machine without a GPU (or for one worker), one worker in the driver's own process (its models
    already use every core)."""

    def __init__(self, *, workers: int | None = None, workers_per_gpu: int = DEFAULT_WORKERS_PER_GPU,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
                 videos_per_worker: int | None = None):
        self.workers = workers
        self.videos_per_worker = videos_per_worker
        self.workers_per_gpu = workers_per_gpu
        self.max_attempts = max_attempts
        self.stall_timeout_s = stall_timeout_s
        self.inner: Executor | None = None

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]:
        gpus = local_gpus(settings.runtime.device)
        n = self.workers or (len(gpus) * self.workers_per_gpu if gpus else 1)
        self.inner = (LocalExecutor(self.videos_per_worker) if n == 1 else
                      ProcessExecutor(n, gpus or None, per_gpu=self.workers_per_gpu, max_attempts=self.max_attempts,
                                      stall_timeout_s=self.stall_timeout_s, in_flight=self.videos_per_worker))
        return self.inner.start(settings, out_uri, cache_dir)

    def run(self, hooks: TaskHooks) -> None:
        if self.inner is None:
            raise RuntimeError("executor not started")
        self.inner.run(hooks)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
