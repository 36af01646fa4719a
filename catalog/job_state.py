"""Job and task state in the SQL index: planning, claiming across drivers, retries, resume, cancel, status.

Only the job driver writes here (plus `vidx job cancel`, which flips one job row). Every state change
is one transaction built from conditional UPDATEs, so two drivers (two jobs over the same archive, or
a resumed job racing a late driver) can never run the same video at once:

* a task moves queued -> running only if it is still queued (the UPDATE's WHERE says so);
* before that, the claim "touches" the video row, which takes the row lock on PostgreSQL and the
  write lock on SQLite, then checks that no task of another *live* job is running that video and that
  nobody finished it meanwhile. A job is live while its driver's heartbeat is fresh; a driver on this
  host is live while its process exists, whatever the clock says (a step of the wall clock, or a
  heartbeat thread that stalls, must not let a second job run the same videos). Heartbeats are written
  and judged by one clock, the database's (`db_clock`): on PostgreSQL the server's, so hosts whose
  clocks disagree still agree on how old a beat is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from catalog.db import Catalog, retrying
from catalog.records import JobInfo, JobRow
from schemas.errors import VidxError
from schemas.sql import Job, Run, Task, Video, aware, db_clock, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
"""How often a driver beats (and looks for a cancel request)."""
STALE_AFTER_S = 30.0
"""A running job whose driver has not beaten for this long is taken to be dead (resumable)."""
LOCAL_STALE_AFTER_S = 600.0
"""The same for a driver on this host whose process still exists. The process check is what tells; this
limit only keeps a reused process id from holding a dead job forever."""
CHUNK = 500

Blocked = Literal["blocked"]
BLOCKED: Blocked = "blocked"
"""claim_next: queued tasks remain, but other live jobs are running their videos right now."""
TAKEN_OVER = "taken over"
"""heartbeat: another process became this job's driver (`vidx job resume --force`); this one must stop."""




class JobStateError(VidxError):
    """A job cannot be resumed, cancelled or found."""


@dataclass(frozen=True)
class LastOutcome:
    """The most recent finished attempt at a video, by any job."""

    status: str
    fingerprint: str
    run_id: int | None
    error: str | None
    job_id: int


def last_outcomes(s: Session, video_ids: Iterable[int]) -> dict[int, LastOutcome]:
    ids = list(video_ids)
    out: dict[int, LastOutcome] = {}
    for i in range(0, len(ids), CHUNK):
        latest = (select(func.max(Task.id)).where(Task.video_id.in_(ids[i:i + CHUNK]),
                                                  Task.status.in_(("done", "failed"))).group_by(Task.video_id))
        rows = s.execute(select(Task.video_id, Task.status, Task.fingerprint, Job.run_id, Task.error, Task.job_id)
                         .join(Job, Job.id == Task.job_id).where(Task.id.in_(latest)))
        for vid, status, fp, run_id, error, job_id in rows:
            out[vid] = LastOutcome(status, fp, run_id, error, job_id)
    return out


PlanKind = Literal["new", "changed", "stale", "retry", "current", "failed_before", "stale_kept"]
"""What a video is to a new job: indexed (new, changed file, stale: indexed by another run, retry) or skipped
(current, failed_before: failed with this run and this file, stale_kept: another run's results kept)."""


def plan_kind(video: Video, last: LastOutcome | None, run_id: int, *, reprocess_stale: bool,
              retry_failed: bool) -> tuple[PlanKind, str | None]:
    """What a video is to a job of run `run_id`, and why it needs no work (None when it must be indexed)."""
    if last is None:
        return "new", None
    if last.fingerprint != video.fingerprint:
        return "changed", None  # changed since it was last looked at
    if last.status == "done" and video.run_id == run_id and last.run_id == run_id:
        return "current", "already indexed with this pipeline, these models and settings"
    if last.status == "failed" and last.run_id == run_id and not retry_failed:
        return "failed_before", f"failed before in job {last.job_id}: {last.error} (--retry-failed tries again)"
    if video.run_id is not None and video.run_id != run_id and video.status == "indexed" and last.status == "done":
        if not reprocess_stale:
            return "stale_kept", ("indexed by another pipeline/model version or other settings, kept as it is "
                                  "(--keep-stale)")
        return "stale", None
    return "retry", None


def classify(video: Video, last: LastOutcome | None, run_id: int, *, reprocess_stale: bool,
             retry_failed: bool) -> str | None:
    """Why a video needs no work in a job of run `run_id` (the skip reason), or None when it must be indexed."""
    return plan_kind(video, last, run_id, reprocess_stale=reprocess_stale, retry_failed=retry_failed)[1]


@retrying
def plan_job(catalog: Catalog, archive: str, run: Run, options: dict[str, Any], videos: list[Video], *,
             driver: str | None, reprocess_stale: bool = True, retry_failed: bool = False,
             status: str = "running") -> tuple[int, int, int]:
    """A job with one task per video, queued or skipped with its reason. Returns (job id, queued, skipped);
    the job's options get `plan`: how many videos of each PlanKind."""
    with catalog.session() as s:
        now = db_clock(s) if status == "running" else None
        job = Job(archive=archive, status=status, run_id=run.id, options=options, driver=driver,
                  started_at=now, heartbeat_at=now)
        s.add(job)
        s.flush()
        last = last_outcomes(s, [v.id for v in videos])
        queued = skipped = 0
        kinds: Counter[str] = Counter()
        for v in videos:
            kind, why = plan_kind(v, last.get(v.id), run.id, reprocess_stale=reprocess_stale,
                                  retry_failed=retry_failed)
            kinds[kind] += 1
            s.add(Task(job_id=job.id, video_id=v.id, path=v.path, fingerprint=v.fingerprint, size=v.size,
                       status="skipped" if why else "queued", error=why))
            queued += why is None
            skipped += why is not None
        job.options = {**options, "plan": {k: kinds.get(k, 0) for k in get_args(PlanKind)}}
        return job.id, queued, skipped


@retrying
def claim_next(catalog: Catalog, job_id: int, worker: str, *, max_attempts: int | None = None,
               stale_after_s: float = STALE_AFTER_S, driver: str | None = None) -> Task | Blocked | None:
    """Move the largest queued task of this job to running, unless another live job is on its video.

    Returns the task, BLOCKED (queued tasks remain but every one is being run by another job; ask
    again later), or None (nothing queued, or the job's driver is no longer `driver`: it was taken over).
    A task whose video another job finished meanwhile, with the same fingerprint and run, is marked
    skipped on the way. A task that already used `max_attempts` (its driver died during each one: a
    decoder that crashes an in-process worker) is marked failed.
    """
    seen: set[int] = set()
    while True:
        with catalog.session() as s:
            # Shared row lock on PostgreSQL: a take-over waits for this claim to end, and then re-queues it.
            job = s.get(Job, job_id, with_for_update={"read": True})
            if job is None:
                raise JobStateError(f"no job {job_id}")
            if driver is not None and job.driver != driver:
                return None
            q = select(Task).where(Task.job_id == job_id, Task.status == "queued")
            if seen:
                q = q.where(Task.id.not_in(seen))
            task = s.scalar(q.order_by(Task.size.desc(), Task.id).limit(1))
            if task is None:
                if seen:
                    return BLOCKED
                return None
            # Lock the video row first: PostgreSQL row lock / SQLite write lock until this transaction ends.
            s.execute(update(Video).where(Video.id == task.video_id).values(size=Video.size))
            running_it = s.scalars(select(Job).join(Task, Task.job_id == Job.id).where(
                Task.video_id == task.video_id, Task.status == "running", Task.job_id != job_id)).all()
            now = db_clock(s) if running_it else None
            if now is not None and any(driver_alive(other, now, stale_after_s=stale_after_s) for other in running_it):
                seen.add(task.id)
                continue
            video = s.get(Video, task.video_id)
            last = last_outcomes(s, [task.video_id]).get(task.video_id)
            if (video is not None and last is not None and last.status == "done" and last.job_id != job_id
                    and last.fingerprint == task.fingerprint and video.run_id == job.run_id == last.run_id):
                s.execute(update(Task).where(Task.id == task.id, Task.status == "queued").values(
                    status="skipped", error=f"indexed meanwhile by job {last.job_id}", finished_at=utcnow()))
                continue
            if max_attempts is not None and task.attempts >= max_attempts:
                why = (f"the process indexing it died during each of {task.attempts} attempts "
                       "(a crashing decoder?); gave up")
                s.execute(update(Task).where(Task.id == task.id, Task.status == "queued").values(
                    status="failed", error=why, finished_at=utcnow()))
                s.execute(update(Video).where(Video.id == task.video_id, Video.run_id.is_(None)).values(
                    status="failed", error=why))
                continue
            claimed = s.execute(update(Task).where(Task.id == task.id, Task.status == "queued").values(
                status="running", worker=worker, claimed_at=utcnow(), attempts=Task.attempts + 1, error=None))
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                s.flush()
                s.refresh(task)
                return task


@retrying
def note_retry(catalog: Catalog, task_id: int, reason: str, worker: str | None = None) -> None:
    """A running task's attempt ended without a result (worker died, hung): count it; it stays running."""
    with catalog.session() as s:
        values: dict[str, Any] = {"attempts": Task.attempts + 1, "error": reason, "claimed_at": utcnow()}
        if worker:
            values["worker"] = worker
        s.execute(update(Task).where(Task.id == task_id).values(**values))


@retrying
def release_running(catalog: Catalog, job_id: int) -> None:
    """Put every running task of a job back in the queue (its driver stops: cancel, Ctrl-C, an error).

    The attempt in progress is given back: stopping on purpose is not the video's fault.
    """
    with catalog.session() as s:
        s.execute(update(Task).where(Task.job_id == job_id, Task.status == "running", Task.attempts > 0)
                  .values(status="queued", worker=None, attempts=Task.attempts - 1))


@retrying
def heartbeat(catalog: Catalog, job_id: int, driver: str | None = None) -> str:
    """Beat for this job's driver; returns the job's status (`cancelling` asks the driver to stop), or
    TAKEN_OVER when `driver` is no longer the job's driver (the beat is then not written)."""
    with catalog.session() as s:
        beat = update(Job).where(Job.id == job_id)
        if driver is not None:
            beat = beat.where(Job.driver == driver)
        wrote = s.execute(beat.values(heartbeat_at=db_clock(s))).rowcount  # type: ignore[attr-defined]
        status = s.scalar(select(Job.status).where(Job.id == job_id))
    if status is not None and not wrote:
        return TAKEN_OVER
    return status or "missing"


def queued_paths(catalog: Catalog, job_id: int) -> list[str]:
    with catalog.session() as s:
        return list(s.scalars(select(Task.path).where(Task.job_id == job_id, Task.status == "queued")))


def get_job(catalog: Catalog, job_id: int) -> Job:
    with catalog.session() as s:
        job = s.get(Job, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id} in this index", path=catalog.url, hint="vidx job list shows the jobs")
    return job


def driver_id(pid: int | None = None) -> str:
    """Who drives a job: `host:pid:space:start`, where `space` names the process-id namespace on this boot
    and `start` is the process's start time (both from /proc; plain `host:pid` where there is no /proc).

    A host name alone does not say that a process id means the same process: a container restarted under
    its old host name, or pods sharing their node's name, count processes from 1 in a namespace of their
    own, and a finished driver's id can be reused. A driver in another namespace is judged by its heartbeat.
    """
    pid = os.getpid() if pid is None else pid
    space, stat = _pid_space(), _proc_stat(pid)
    if space is None or stat is None:
        return f"{socket.gethostname()}:{pid}"
    return f"{socket.gethostname()}:{pid}:{space}:{stat[1]}"


def _pid_space() -> str | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{space}".encode()).hexdigest()[:10]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process in this namespace, None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _local_process_exists(driver: str | None) -> bool | None:
    """Whether the driver's process exists, when it ran on this host in this namespace; None when it ran
    elsewhere (another host, or another container under the same host name)."""
    host, _, rest = (driver or "").partition(":")
    pid, space, start = [*rest.split(":"), "", ""][:3]
    if host != socket.gethostname() or not pid.isdigit() or (space and space != _pid_space()):
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        pass
    stat = _proc_stat(int(pid))
    if stat is None:
        return True
    if stat[0] == "Z":  # a driver that died but was not reaped yet is a zombie: gone all the same
        return False
    return not start or stat[1] == start  # another start time: the id was reused by another process


def driver_alive(job: Job, now: dt.datetime, *, stale_after_s: float = STALE_AFTER_S) -> bool:
    """A driver on this host: its process exists (and it beat in the last LOCAL_STALE_AFTER_S). Elsewhere:
    it beat in the last `stale_after_s`. `now` is `db_clock`'s, the clock the beats were written by."""
    beat = aware(job.heartbeat_at)
    if job.status not in ("running", "cancelling") or beat is None:
        return False
    age = (now - beat).total_seconds()
    local = _local_process_exists(job.driver)
    if local is None:
        return age < stale_after_s
    return local and age < max(stale_after_s, LOCAL_STALE_AFTER_S)


@retrying
def take_over(catalog: Catalog, job_id: int, driver: str, *, force: bool = False,
              stale_after_s: float = STALE_AFTER_S) -> Job:
    """Make this process the driver of an unfinished job: its running tasks go back to the queue.

    Refused while the old driver still beats (unless `force`), and for a job that finished.
    """
    for _ in range(20):  # looked at again when the job changed between reading and writing (a beat)
        with catalog.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobStateError(f"no job {job_id} in this index", path=catalog.url)
            if job.status == "done":
                raise JobStateError(f"job {job_id} is already done", hint="vidx job submit runs what is missing")
            now = db_clock(s)
            if driver_alive(job, now, stale_after_s=stale_after_s) and not force:
                age = (now - (aware(job.heartbeat_at) or now)).total_seconds()
                raise JobStateError(f"job {job_id} is still being driven by {job.driver} (heartbeat {age:.0f} s "
                                    "ago)", hint=f"stop it or cancel it first (a driver on another host counts "
                                                 f"as stopped {stale_after_s:.0f} s after its last heartbeat), "
                                                 "or --force")
            took = s.execute(update(Job).where(*as_read(job))
                             .values(status="running", driver=driver, heartbeat_at=now, finished_at=None,
                                     started_at=job.started_at or now))
            if took.rowcount != 1:  # type: ignore[attr-defined]
                continue
            s.execute(update(Task).where(Task.job_id == job_id, Task.status == "running").values(status="queued"))
            s.flush()
            s.refresh(job)
            return job
    raise JobStateError(f"job {job_id} kept changing while it was being taken over", hint="try again")


@retrying
def cancel(catalog: Catalog, job_id: int) -> str:
    """Ask a job to stop. A live driver sees `cancelling` at its next beat; otherwise it is cancelled now.

    The change is made only if the job is still as it was read (a resume may take it over meanwhile, or its
    driver beat): then it is looked at again, so a job that just got a live driver is not cancelled under it.
    """
    for _ in range(20):
        with catalog.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobStateError(f"no job {job_id} in this index", path=catalog.url)
            if job.status in ("done", "failed", "cancelled"):
                return job.status
            now = db_clock(s)
            alive = driver_alive(job, now)
            values: dict[str, Any] = {"status": "cancelling"} if alive else {"status": "cancelled", "finished_at": now}
            if s.execute(update(Job).where(*as_read(job)).values(**values)).rowcount != 1:  # type: ignore[attr-defined]
                continue
            if not alive:
                s.execute(update(Task).where(Task.job_id == job_id, Task.status == "running")
                          .values(status="queued"))
            return str(values["status"])
    raise JobStateError(f"job {job_id} kept changing while it was being cancelled", hint="try again")


def as_read(job: Job) -> list[Any]:
    """Conditions that hold while a job row is as it was read: its status, driver and last heartbeat."""
    def same(column: Any, value: Any) -> Any:
        return column.is_(None) if value is None else column == value

    return [Job.id == job.id, Job.status == job.status, same(Job.driver, job.driver),
            same(Job.heartbeat_at, job.heartbeat_at)]


@retrying
def note_detached_driver(catalog: Catalog, job_id: int, driver: str, log_path: str) -> None:
    """Record the background process started to drive a queued job, and its log: `job status` can then tell a
    driver that died before it took the job over (it could not even start) from one that is starting."""
    with catalog.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobStateError(f"no job {job_id} in this index", path=catalog.url)
        s.execute(update(Job).where(Job.id == job_id).values(options={**job.options, "log": log_path}))
        s.execute(update(Job).where(Job.id == job_id, Job.status == "queued", Job.driver.is_(None))
                  .values(driver=driver))


DRIVER_LOG_LINES = 5


def log_tail(path: str | None, lines: int = DRIVER_LOG_LINES) -> list[str]:
    """The last non-empty lines of a driver's log (its last error, when it died); [] when there is none."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def job_info(catalog: Catalog, job_id: int) -> JobInfo:
    """A job's state for `vidx job status`: counts, frames, rate and ETA from the finished tasks."""
    job = get_job(catalog, job_id)
    summary = catalog.job_summary(job_id)
    with catalog.session() as s:
        done_size, done_elapsed = s.execute(select(func.coalesce(func.sum(Task.size), 0),
                                                   func.coalesce(func.sum(Task.elapsed_s), 0.0))
                                            .where(Task.job_id == job_id, Task.status.in_(("done", "failed")))).one()
        left_size = s.scalar(select(func.coalesce(func.sum(Task.size), 0)).where(
            Task.job_id == job_id, Task.status.in_(("queued", "running")))) or 0
        running = s.execute(select(Task.path, Task.worker, Task.attempts).where(
            Task.job_id == job_id, Task.status == "running").order_by(Task.path)).all()
        now = db_clock(s)
    started, finished = aware(job.started_at), aware(job.finished_at)
    wall = ((finished or now) - started).total_seconds() if started else 0.0
    finished_n = summary.done + summary.failed
    eta = None
    if job.status in ("running", "cancelling") and done_size and left_size and wall > 0:
        eta = wall * left_size / done_size
    alive = driver_alive(job, now)
    # gone: a detached driver that never took its queued job over, or a running job's driver that stopped
    gone = ((job.status == "queued" and _local_process_exists(job.driver) is False)
            or (job.status in ("running", "cancelling") and not alive))
    log_path = job.options.get("log")
    return JobInfo(
        **vars(summary), status=job.status, archive=job.archive, driver=job.driver,
        alive=alive, driver_gone=gone, driver_log=log_path,
        driver_error=log_tail(log_path) if gone else [], options=job.options,
        created_at=_iso(job.created_at), started_at=_iso(started), finished_at=_iso(finished),
        heartbeat_at=_iso(job.heartbeat_at), wall_s=round(wall, 3),
        videos_per_s=round(finished_n / wall, 4) if wall > 0 else None,
        frames_per_s=round(summary.frames_decoded / wall, 1) if wall > 0 else None,
        worker_s=round(float(done_elapsed or 0.0), 3), eta_s=round(eta, 1) if eta is not None else None,
        in_progress=[{"path": p, "worker": w, "attempts": a} for p, w, a in running],
    )


def list_jobs(catalog: Catalog, limit: int = 50) -> list[JobRow]:
    with catalog.session() as s:
        jobs = s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all()
        now = db_clock(s)
        counts: dict[int, dict[str, int]] = {}
        for jid, status, n in s.execute(select(Task.job_id, Task.status, func.count())
                                        .where(Task.job_id.in_([j.id for j in jobs]))
                                        .group_by(Task.job_id, Task.status)):
            counts.setdefault(jid, {})[status] = n
    return [JobRow(job_id=j.id, status=j.status, archive=j.archive, created_at=_iso(j.created_at),
                   finished_at=_iso(j.finished_at), alive=driver_alive(j, now), counts=counts.get(j.id, {}))
            for j in jobs]


def _iso(t: dt.datetime | None) -> str | None:
    t = aware(t)
    return t.isoformat(timespec="seconds") if t else None
