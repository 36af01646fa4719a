"""Schedules: an archive re-indexed on a cron expression (nightly reprocessing).

A due schedule runs an incremental job: new and changed videos, plus stale ones if the schedule asks.
Each due slot is claimed with one conditional UPDATE (`next_run_at` moves from the slot seen to the
next one only if nobody moved it first), so two schedulers, or `run-due` fired twice by cron, never
start the same run twice. Slots missed while nothing ran are not replayed: the next slot counts from now.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from catalog.db import Catalog
from schemas.errors import InputError, VidxError
from schemas.sql import Schedule, aware, utcnow

if TYPE_CHECKING:
    from jobs.runner import Executor, JobEvents, JobResult

log = logging.getLogger(__name__)


class ScheduleError(VidxError):
    """A schedule cannot be added or found."""


def next_after(cron: str, after: dt.datetime) -> dt.datetime:
    """The first time strictly after `after` that the cron expression (UTC) names."""
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise InputError(f"not a valid cron expression: {cron!r}", hint='five fields, e.g. "0 2 * * *" (02:00 UTC)')
    nxt = croniter(cron, after).get_next(dt.datetime)
    return aware(nxt) or nxt


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as `vidx schedule add|list` show it (times in ISO 8601, UTC)."""

    name: str
    archive: str
    cron: str
    enabled: bool
    options: dict[str, Any]
    """The job options stored with it (output, settings, executor): JSON, as saved."""
    next_run_at: str | None
    last_run_at: str | None
    last_job_id: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScheduledRun:
    """What running one due slot of a schedule did: the job it started, or why it could not."""

    schedule: str
    slot: str
    job_id: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def add_schedule(catalog: Catalog, name: str, archive: str, cron: str, options: dict[str, Any], *,
                 now: dt.datetime | None = None) -> ScheduleInfo:
    first = next_after(cron, now or utcnow())
    try:
        with catalog.session() as s:
            sched = Schedule(name=name, archive=archive, cron=cron, options=options, next_run_at=first)
            s.add(sched)
            s.flush()
            return describe(sched)
    except IntegrityError as exc:
        raise ScheduleError(f"a schedule named {name!r} exists already",
                            hint="pick another name, or remove it first (vidx schedule remove)") from exc


def remove_schedule(catalog: Catalog, name: str) -> None:
    with catalog.session() as s:
        sched = s.scalar(select(Schedule).where(Schedule.name == name))
        if sched is None:
            raise ScheduleError(f"no schedule named {name!r}")
        s.delete(sched)


def list_schedules(catalog: Catalog) -> list[ScheduleInfo]:
    with catalog.session() as s:
        return [describe(x) for x in s.scalars(select(Schedule).order_by(Schedule.name))]


def describe(s: Schedule) -> ScheduleInfo:
    return ScheduleInfo(s.name, s.archive, s.cron, s.enabled, s.options, _iso(s.next_run_at), _iso(s.last_run_at),
                        s.last_job_id)


def _iso(t: dt.datetime | None) -> str | None:
    t = aware(t)
    return t.isoformat(timespec="seconds") if t else None


@dataclass(frozen=True)
class Claimed:
    """A due slot this process won: it must now run the schedule's job."""

    schedule_id: int
    name: str
    archive: str
    options: dict[str, Any]
    slot: dt.datetime


def claim_due(catalog: Catalog, *, now: dt.datetime | None = None) -> list[Claimed]:
    """Claim every due slot; each slot is won by exactly one caller."""
    now = now or utcnow()
    won: list[Claimed] = []
    with catalog.session() as s:
        due = s.execute(select(Schedule.id, Schedule.next_run_at).where(Schedule.enabled.is_(True),
                                                                        Schedule.next_run_at <= now)).all()
    for sid, slot in due:
        with catalog.session() as s:
            sched = s.get(Schedule, sid)
            if sched is None:
                continue
            nxt = next_after(sched.cron, max(now, aware(slot) or now))
            res = s.execute(update(Schedule).where(Schedule.id == sid, Schedule.next_run_at == slot)
                            .values(next_run_at=nxt, last_run_at=now))
            if res.rowcount == 1:  # type: ignore[attr-defined]
                won.append(Claimed(sid, sched.name, sched.archive, dict(sched.options), aware(slot) or slot))
            else:
                log.info("schedule %s: slot %s taken by another scheduler", sched.name, slot)
    return won


def run_due(catalog: Catalog, submit: Callable[[Claimed], int], *, now: dt.datetime | None = None,
            ) -> list[ScheduledRun]:
    """Claim the due slots and run each schedule's job through `submit` (returns the job id)."""
    results = []
    for claimed in claim_due(catalog, now=now):
        try:
            job_id: int | None = submit(claimed)
            error = None
        except VidxError as exc:
            job_id, error = None, exc.describe()
            log.error("schedule %s: %s", claimed.name, error)
        if job_id is not None:
            with catalog.session() as s:
                s.execute(update(Schedule).where(Schedule.id == claimed.schedule_id).values(last_job_id=job_id))
        results.append(ScheduledRun(claimed.name, claimed.slot.isoformat(timespec="seconds"), job_id, error))
    return results


def run_claimed(claimed: Claimed, *, catalog: Catalog, events: JobEvents | None = None,
                cache_dir: Path | None = None,
                executor_for: Callable[[dict[str, Any]], Executor] | None = None) -> JobResult:
    """Run a claimed schedule's job in this process, as its stored options say; `executor_for` builds the
    executor from the stored executor options (default: jobs.executors.executor_from_options)."""
    # imported here: listing or adding schedules needs none of the indexing machinery
    from jobs.executors import executor_from_options
    from jobs.runner import PlanOptions, run_job
    from schemas.config import IndexSettings

    o = claimed.options
    executor = o.get("executor", {"kind": "local"})
    archive = claimed.archive if "://" in claimed.archive else Path(claimed.archive)
    return run_job(archive, catalog=catalog, out_uri=o["out"], settings=IndexSettings.from_json(o["settings"]),
                   executor=(executor_for or executor_from_options)(executor), cache_dir=cache_dir, events=events,
                   options=PlanOptions(bool(o.get("reprocess_stale", True)), bool(o.get("retry_failed"))),
                   executor_options=executor)


def seconds_until_next(catalog: Catalog, *, now: dt.datetime | None = None) -> float | None:
    now = now or utcnow()
    with catalog.session() as s:
        nxt = s.scalar(select(Schedule.next_run_at).where(Schedule.enabled.is_(True))
                       .order_by(Schedule.next_run_at).limit(1))
    nxt = aware(nxt)
    return None if nxt is None else max(0.0, (nxt - now).total_seconds())
