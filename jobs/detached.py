"""A job driven from a background process: planned here, then `vidx job resume ID` runs it to the end."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.db import Catalog
from catalog.job_state import driver_id, note_detached_driver
from jobs.runner import PlanOptions, plan
from schemas.config import IndexSettings


@dataclass(frozen=True)
class DetachedJob:
    """A planned job and the background driver started for it."""

    job_id: int
    queued: int
    skipped: int
    unreadable: int
    driver_pid: int
    log: str
    """The driver's output (a file in OUT/jobs, or the working directory when the output is an object store)."""
    db: str


def start_detached(archive: Path | str, *, catalog: Catalog, out_uri: str, settings: IndexSettings,
                   executor_options: dict[str, Any], options: PlanOptions,
                   cache_dir: Path | None = None) -> DetachedJob:
    """Plan the job here (queued), then start its driver, detached from this terminal, and note it."""
    job_id, queued, skipped, unreadable = plan(
        archive, catalog=catalog, out_uri=out_uri, settings=settings, cache_dir=cache_dir, options=options,
        executor_options=executor_options, status="queued")
    log_dir = Path(out_uri).expanduser() / "jobs" if "://" not in out_uri else Path.cwd()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"job-{job_id}.log"
    env = dict(os.environ)
    if cache_dir:
        env["VIDX_CACHE_DIR"] = str(cache_dir)
    # -P: the working directory is not put on sys.path, so a `vidx/` folder there (the parent of a clone)
    # cannot shadow the installed package in the driver
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "vidx", "job", "resume", str(job_id), "--db",
                                 catalog.url, "--quiet"],
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    note_detached_driver(catalog, job_id, driver_id(proc.pid), str(log_path))
    return DetachedJob(job_id=job_id, queued=queued, skipped=skipped, unreadable=len(unreadable),
                       driver_pid=proc.pid, log=str(log_path), db=catalog.url)
