"""The executor a job's stored options name: in-process (`{"kind": "local"}`) or Ray (RayOptions' JSON)."""

from __future__ import annotations

from typing import Any

from jobs.runner import Executor
from schemas.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_STALL_TIMEOUT_S, DEFAULT_WORKERS_PER_GPU


def executor_from_options(raw: dict[str, Any], address: str | None = None) -> Executor:
    """The executor `raw` (a job's or schedule's "executor" option) names; `address` overrides the stored one."""
    if raw.get("kind", "local") == "local":
        from jobs.processes import LocalWorkers

        return LocalWorkers(workers=raw.get("workers"),
                            workers_per_gpu=int(raw.get("workers_per_gpu", DEFAULT_WORKERS_PER_GPU)),
                            max_attempts=int(raw.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
                            stall_timeout_s=float(raw.get("stall_timeout_s", DEFAULT_STALL_TIMEOUT_S)),
                            videos_per_worker=raw.get("videos_per_worker"))
    from jobs.ray_executor import RayExecutor, RayOptions  # Ray is imported only for jobs that run on it

    opts = RayOptions.from_json(raw)
    if address:
        opts = RayOptions.from_json({**raw, "address": address})
    return RayExecutor(opts)
