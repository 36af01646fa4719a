"""Running a job's videos on Ray: worker actors on the GPUs (CPU workers without GPUs), handed work dynamically.

The driver (this process) claims videos from the SQL index, largest first, and keeps each actor busy
with `videos_per_worker` videos at once (several NVDEC sessions per GPU), which go through one indexer
in the actor so that their frames share the models' batches. Actors load and warm their engines once.
Failures are contained per worker process:

* an actor that dies mid-video (segfault in a decoder, OOM, `ray.kill`) is replaced; its videos are
  retried with backoff, each alone on a worker (so the culprit cannot take innocent videos down again),
  up to `max_attempts`, then marked failed with the reason;
* a video that makes no progress for `stall_timeout_s` (a hung decoder) gets its worker killed and
  replaced, and counts as a failed attempt; the other videos on that worker are re-run at no cost;
* a video that fails for its own reason (VideoError: corrupt, unsupported) comes back as a failed
  outcome from the worker and is never retried.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog import job_state as state
from indexer.host_memory import arena_env
from indexer.storage import forwarded_env
from jobs.ray_worker import RayWorker
from jobs.runner import TaskHooks
from jobs.worker import FAULTS_ENV, TaskSpec
from schemas.config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_STALL_TIMEOUT_S,
    DEFAULT_WORKERS_PER_GPU,
    NVDEC_VIDEOS_IN_FLIGHT,
    IndexSettings,
)
from schemas.errors import VidxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How a job uses a Ray cluster."""

    address: str | None = None
    """None: start a local Ray instance on this machine (embedded default); "auto" or "ray://host:10001"."""
    workers: int | None = None
    """Worker actors (default: `workers_per_gpu` per GPU in the cluster; without GPUs, CPUs // cpus_per_worker)."""
    workers_per_gpu: int = DEFAULT_WORKERS_PER_GPU
    """GPU workers that share one GPU (each asks Ray for 1/N of a GPU). Each is a process with its own
    Python interpreter, so their host work (decoder loops, tracking, launching kernels) runs in parallel:
    on an H100, 2 per GPU indexed 2,423 decoded frames/s against 1,808 in one process (docs/performance.md,
    "GPU through the product")."""
    videos_per_worker: int | None = None
    """Videos each worker runs at once, sharing the models' batches (default: 8 on a GPU, to keep the NVDEC
    engines busy, as `vidx index` does; 1 on a CPU)."""
    gpu: bool | None = None
    """Use GPU workers (1/workers_per_gpu of a GPU each); None: when the cluster has GPUs."""
    cpus_per_worker: int = 4
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Attempts per video when its worker dies or hangs (a video's own errors are never retried)."""
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    """A video with no decoded batch for this long is taken to be hung."""
    backoff_s: float = 2.0
    """First retry delay; doubles with each attempt."""
    start_wait_s: float = 30.0
    """Once one worker is up, how long to wait for the others before work starts (later ones join)."""
    include_dashboard: bool | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    """Resources of the local instance (only when this process starts it)."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": "ray", **{k: v for k, v in self.__dict__.items() if v is not None}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RayOptions:
        return cls(**{k: v for k, v in raw.items() if k != "kind"})


class WorkerStartError(VidxError):
    """No worker actor could be started (models missing on the node, no resources, a broken install)."""


@dataclass
class _Flight:
    spec: TaskSpec
    isolated: bool


@dataclass
class _Slot:
    """One worker position; its actor is replaced when it dies."""

    label: str
    handle: Any
    generation: int = 0
    inflight: dict[Any, _Flight] = field(default_factory=dict)
    probe: Any = None
    probe_sent: float = 0.0
    starting: Any = None
    """The pending `describe` call of an actor that is still loading its models (or waiting for a node)."""
    failures: int = 0

    @property
    def isolated(self) -> bool:
        return any(f.isolated for f in self.inflight.values())


class RayExecutor:
    def __init__(self, options: RayOptions | None = None):
        self.options = options or RayOptions()
        self.slots: list[_Slot] = []
        self.owns_ray = False
        self.poll_s = min(2.0, self.options.stall_timeout_s / 4)
        self._actor_args: tuple[Any, ...] = ()
        self._actor_opts: dict[str, Any] = {}
        self._per_worker = 1
        self.replaced = 0

    # ------------------------------------------------------------------------------------ lifecycle

    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        opts = self.options
        common: dict[str, Any] = {"namespace": "vidx", "log_to_driver": False}
        if opts.address:
            ray.init(address=opts.address, **common)
        else:
            ray.init(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=opts.include_dashboard,
                     **common)
        self.owns_ray = True

    def start(self, settings: IndexSettings, out_uri: str, cache_dir: Path | None) -> dict[str, Any]:
        import ray

        self._init_ray()
        opts = self.options
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        use_gpu = opts.gpu if opts.gpu is not None else gpus > 0
        if use_gpu and gpus == 0 and not opts.address:  # a local instance has no autoscaler to add GPUs
            raise WorkerStartError("GPU workers asked for, but the local Ray instance has no GPU",
                                   hint="use --device auto or cpu, or --address a cluster with GPU nodes")
        if use_gpu:
            share = opts.workers_per_gpu
            n = opts.workers or max(1, gpus) * share
            self._per_worker = opts.videos_per_worker or NVDEC_VIDEOS_IN_FLIGHT
            self._actor_opts = {"num_gpus": 1.0 / share, "num_cpus": 1}
            kind = "gpu"
            sharing = f"{share} per GPU, " if share > 1 else ""
        else:
            per = min(cpus, opts.cpus_per_worker)
            n = opts.workers or max(1, cpus // per)
            self._per_worker = opts.videos_per_worker or 1
            self._actor_opts = {"num_cpus": per}
            kind, sharing = "cpu", ""
        # A thread per video call (each waits for its outcome) and one spare so that progress probes are
        # answered while every video is busy.
        self._actor_opts["max_concurrency"] = self._per_worker + 1
        # Set at the worker process's start: from Python inside the actor it would come too late (host_memory).
        self._actor_opts["runtime_env"] = {"env_vars": {**forwarded_env(), **arena_env()}}
        self._actor_args = (settings.to_json(), out_uri, str(cache_dir) if cache_dir else None)
        faults = os.environ.get(FAULTS_ENV)
        self._faults = faults
        self.slots = [_Slot(f"{kind}{i}", None) for i in range(n)]
        for slot in self.slots:
            slot.handle = self._spawn(slot)
        first = self._first_ready()
        return {"executor": "ray", "workers": f"{n} x {kind} ({sharing}{self._per_worker} videos at once each)",
                "cluster": f"{cpus} CPUs, {gpus} GPUs", "decoder": first.get("decoder", "?"),
                **{k: v for k, v in first.items() if k not in ("worker", "decoder", "in_flight")}}

    def _spawn(self, slot: _Slot) -> Any:
        import ray

        actor_cls = ray.remote(RayWorker)
        handle: Any = actor_cls.options(max_restarts=0, **self._actor_opts).remote(
            *self._actor_args, slot.label, self._per_worker, self._faults)
        slot.starting = handle.describe.remote()
        return handle

    def _first_ready(self) -> dict[str, str]:
        """Wait until one worker has loaded its engines (the others join as they come up: autoscaling)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        waited = 0.0
        while True:
            pending = [s.starting for s in self.slots if s.starting is not None]
            if not pending:
                raise WorkerStartError("no worker could be started")
            ready, _ = ray.wait(pending, num_returns=1, timeout=30)
            waited += 30
            for ref in ready:
                slot = next(s for s in self.slots if s.starting == ref)
                slot.starting = None
                try:
                    info: dict[str, str] = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    raise WorkerStartError(f"worker {slot.label} failed to start: {exc}") from exc
                self._await_others()
                return info
            if not ready:
                log.warning("waiting for a worker to start (%.0f s): resources %s, available %s", waited,
                            self._actor_opts, ray.available_resources())

    def _await_others(self) -> None:
        """Give the other workers a while to load too, so that work starts spread over all of them; a
        worker that needs a new node (autoscaling) joins later."""
        import ray

        pending = [s.starting for s in self.slots if s.starting is not None]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=self.options.start_wait_s)
        self._check_started()

    def _check_started(self) -> None:
        """Mark workers whose engines finished loading as ready; restart (a few times) ones that failed."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        for slot in self.slots:
            if slot.starting is None:
                continue
            ready, _ = ray.wait([slot.starting], timeout=0)
            if not ready:
                continue
            try:
                ray.get(slot.starting)
                slot.starting = None
            except (RayActorError, RayTaskError) as exc:
                slot.failures += 1
                if slot.failures > 3:
                    raise WorkerStartError(f"worker {slot.label} failed to start {slot.failures} times: {exc}") from exc
                log.warning("worker %s failed to start (%s); starting it again", slot.label, exc)
                slot.handle = self._spawn(slot)

    @property
    def actors(self) -> list[Any]:
        """The live actor handles (tests kill them to check recovery)."""
        return [s.handle for s in self.slots]

    def close(self) -> None:
        import ray

        for slot in self.slots:
            if slot.handle is not None:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception as exc:  # already gone
                    log.debug("kill %s: %s", slot.label, exc)
        self.slots = []
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
            self.owns_ray = False

    # ------------------------------------------------------------------------------------- the loop

    def run(self, hooks: TaskHooks) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        opts = self.options
        retries: list[tuple[float, _Flight]] = []
        exhausted = False
        blocked_until = 0.0
        last_poll = time.monotonic()

        def retry_or_fail(flight: _Flight, reason: str, *, counts: bool = True, isolate: bool = True) -> None:
            spec = flight.spec
            if not counts:
                retries.append((time.monotonic(), _Flight(spec, flight.isolated)))
                return
            again = hooks.next_attempt(spec, reason, opts.max_attempts)
            if again is not None:
                delay = opts.backoff_s * 2 ** (spec.attempts - 1)
                retries.append((time.monotonic() + delay, _Flight(again, isolate)))

        def replace_actor(slot: _Slot, kill: bool, why: str) -> None:
            if kill:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception as exc:
                    log.debug("kill %s: %s", slot.label, exc)
            slot.generation += 1
            slot.probe = None
            slot.inflight.clear()
            slot.handle = self._spawn(slot)
            self.replaced += 1
            log.warning("worker %s replaced (generation %d)", slot.label, slot.generation)
            hooks.on_worker_replaced(f"{slot.label}: {why}")

        while not hooks.should_stop():
            now = time.monotonic()
            # Hand out work: retries first (a suspect video runs alone), then new claims, largest first.
            for slot in self.slots:
                while slot.starting is None and len(slot.inflight) < self._per_worker and not slot.isolated:
                    flight = None
                    ready = [r for r in retries if r[0] <= now]
                    if ready:
                        pick = ready[0]
                        if pick[1].isolated and slot.inflight:
                            break
                        retries.remove(pick)
                        flight = pick[1]
                    elif not exhausted and now >= blocked_until:
                        got = hooks.next_task(slot.label)
                        if got is None:
                            exhausted = True
                        elif got == state.BLOCKED:
                            blocked_until = now + 1.0
                        elif isinstance(got, TaskSpec):
                            flight = _Flight(got, False)
                    if flight is None:
                        break
                    ref = slot.handle.process.remote(flight.spec)
                    slot.inflight[ref] = flight
            refs = [ref for slot in self.slots for ref in slot.inflight]
            if not refs:
                if exhausted and not retries:
                    return
                time.sleep(0.2)
                self._check_started()
                continue
            done, _ = ray.wait(refs, num_returns=1, timeout=min(0.5, self.poll_s))
            if done:
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                owner = next((s for s in self.slots if ref in s.inflight), None)
                if owner is None:
                    continue  # its worker died and was replaced; its videos are already rescheduled
                slot = owner
                flight = slot.inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayActorError as exc:
                    # The process died: every video it had is suspect, the culprit unknown.
                    why = "worker process died while indexing (decoder crash, out of memory or killed)"
                    log.warning("%s: %s (%s)", slot.label, why, type(exc).__name__)
                    lost = [flight, *slot.inflight.values()]
                    replace_actor(slot, kill=False, why=why)
                    for f in lost:
                        retry_or_fail(f, why)
                    continue
                except RayTaskError as exc:
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    retry_or_fail(flight, f"worker error: {type(cause).__name__}: {cause}", isolate=False)
                    continue
                hooks.on_done(flight.spec, outcome)
            if time.monotonic() - last_poll >= self.poll_s:
                last_poll = time.monotonic()
                self._check_started()
                self._check_stalls(retry_or_fail, replace_actor, RayActorError)

    def _check_stalls(self, retry_or_fail: Any, replace_actor: Any, died_error: type[BaseException]) -> None:
        import ray

        limit = self.options.stall_timeout_s
        now = time.monotonic()
        for slot in self.slots:
            if not slot.inflight:
                slot.probe = None
                continue
            if slot.probe is None:
                slot.probe, slot.probe_sent = slot.handle.stalled_for.remote(), now
                continue
            ready, _ = ray.wait([slot.probe], timeout=0)
            if not ready:
                if now - slot.probe_sent > limit:  # the whole process is stuck (a hang holding the GIL)
                    why = f"worker unresponsive for {limit:.0f} s (decoder hung); worker restarted"
                    lost = list(slot.inflight.values())
                    replace_actor(slot, kill=True, why=why)
                    for f in lost:
                        retry_or_fail(f, why)
                continue
            try:
                stalled: dict[int, float] = ray.get(slot.probe)
            except died_error:
                slot.probe = None
                continue  # the process() refs report the death
            slot.probe = None
            hung = {vid for vid, s in stalled.items() if s > limit}
            if hung:
                why = f"no progress for {limit:.0f} s (decoder hung); worker restarted"
                lost = list(slot.inflight.values())
                replace_actor(slot, kill=True, why=why)
                for f in lost:
                    if f.spec.video_id in hung:
                        retry_or_fail(f, why)
                    else:
                        retry_or_fail(f, why, counts=False)
