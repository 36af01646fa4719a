"""Schedules: a due slot runs exactly once, however many run-due calls or schedulers race for it."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from bench.jobs import make_short_archive
from catalog.db import Catalog, default_db_url
from engines.photos import load_photo
from jobs.schedule import add_schedule, claim_due, next_after
from schemas.errors import InputError
from schemas.sql import Job, Schedule, utcnow
from vidx.cli import cli


def make_due(catalog: Catalog, name: str, minutes_ago: float = 1.0) -> None:
    with catalog.session() as s:
        s.execute(update(Schedule).where(Schedule.name == name)
                  .values(next_run_at=utcnow() - dt.timedelta(minutes=minutes_ago)))


def test_a_due_schedule_runs_once_when_run_due_is_called_twice(tmp_path: Path, cache_dir: Path) -> None:
    make_short_archive(tmp_path / "a", {"obama": load_photo("obama", cache_dir)}, 2)
    out = tmp_path / "out"
    runner = CliRunner()
    base = ["--cache-dir", str(cache_dir)]
    # a nightly slot half a day away on the real clock: neither the first check nor a rerun can meet a slot falling due
    hour = (utcnow().hour + 12) % 24
    res = runner.invoke(cli, [*base, "schedule", "add", "nightly", str(tmp_path / "a"), "--cron", f"0 {hour} * * *",
                              "--out", str(out), "--executor", "local", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)
    assert added["next_run_at"].endswith(f"{hour:02d}:00:00+00:00")
    catalog = Catalog(default_db_url(out))
    res = runner.invoke(cli, [*base, "schedule", "run-due", "--out", str(out), "--json"])
    assert json.loads(res.output) == []  # not due yet
    make_due(catalog, "nightly")
    first = runner.invoke(cli, [*base, "schedule", "run-due", "--out", str(out), "--json"])
    second = runner.invoke(cli, [*base, "schedule", "run-due", "--out", str(out), "--json"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    ran = json.loads(first.output)
    assert len(ran) == 1 and ran[0]["schedule"] == "nightly" and ran[0]["error"] is None
    assert json.loads(second.output) == []
    with catalog.session() as s:
        jobs = s.scalars(select(Job)).all()
        sched = s.scalars(select(Schedule)).one()
    assert len(jobs) == 1 and jobs[0].status == "done" and jobs[0].summary and jobs[0].summary["done"] == 2
    assert sched.last_job_id == jobs[0].id
    res = runner.invoke(cli, [*base, "schedule", "list", "--out", str(out), "--json"])
    (listed,) = json.loads(res.output)
    assert listed["last_job_id"] == jobs[0].id and listed["next_run_at"] > listed["last_run_at"]

    make_due(catalog, "nightly")  # the next night: incremental, nothing new
    again = json.loads(runner.invoke(cli, [*base, "schedule", "run-due", "--out", str(out), "--json"]).output)
    with catalog.session() as s:
        job2 = s.get(Job, again[0]["job_id"])
    assert job2 is not None and job2.summary and (job2.summary["done"], job2.summary["skipped"]) == (0, 2)


def test_racing_schedulers_claim_each_slot_once(db_url: str, tmp_path: Path) -> None:
    url = db_url
    catalog = Catalog(url)
    for i in range(5):
        add_schedule(catalog, f"s{i}", str(tmp_path), "*/5 * * * *", {})
        make_due(catalog, f"s{i}", minutes_ago=i + 1)
    # one clock for every claim: the next five-minute slot may be due by the last claim on a real clock
    now = utcnow()
    won: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def scheduler() -> None:
        mine = Catalog(url)
        start.wait()
        claims = claim_due(mine, now=now)
        with lock:
            won.extend(c.name for c in claims)

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won) == [f"s{i}" for i in range(5)]
    assert claim_due(catalog, now=now) == []


def test_cron_is_validated_and_computed_in_utc() -> None:
    now = dt.datetime(2026, 3, 1, 1, 30, tzinfo=dt.UTC)
    assert next_after("0 2 * * *", now) == dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)
    assert next_after("0 2 * * *", now.replace(hour=2)) == dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)
    with pytest.raises(InputError, match="not a valid cron"):
        next_after("every night", now)


def test_clip_helper_makes_decodable_videos(tmp_path: Path) -> None:
    import av

    (clip,) = make_short_archive(tmp_path, {"x": np.full((40, 30, 3), 128, np.uint8)}, 1, seconds=(1.0,))
    with av.open(str(clip)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12


def test_a_schedule_keeps_its_runtime_choices_for_every_night(tmp_path: Path) -> None:
    """`schedule add --engine-start quick` stores the choice with the schedule's settings, read back as it was given;
    the former `--quick-start`, and settings stored by the vidx before it (`quick_start`), mean the same."""
    from schemas.config import IndexSettings

    (tmp_path / "a").mkdir()
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["schedule", "add", "quick", str(tmp_path / "a"), "--cron", "0 3 * * *",
                                   "--out", str(out), "--device", "cpu", "--engine-start", "quick", "--every-frame",
                                   "--json"])
    assert res.exit_code == 0, res.output
    with Catalog(default_db_url(out)).session() as s:
        stored = s.scalars(select(Schedule)).one().options
    settings = IndexSettings.from_json(stored["settings"])
    assert settings.runtime.engine_start == "quick" and settings.sampling.mode == "every-frame"
    assert IndexSettings.from_json(IndexSettings().to_json()).runtime.engine_start == "background"
    earlier = json.loads(stored["settings"])
    for quick, start in ((True, "quick"), (False, "background")):
        earlier["runtime"].pop("engine_start", None)
        earlier["runtime"]["quick_start"] = quick
        assert IndexSettings.from_json(json.dumps(earlier)).runtime.engine_start == start
    res = CliRunner().invoke(cli, ["schedule", "add", "former", str(tmp_path / "a"), "--cron", "0 4 * * *",
                                   "--out", str(out), "--device", "cpu", "--quick-start", "--json"])
    assert res.exit_code == 0, res.output
    with Catalog(default_db_url(out)).session() as s:
        former = s.scalars(select(Schedule).where(Schedule.name == "former")).one().options
    assert IndexSettings.from_json(former["settings"]).runtime.engine_start == "quick"
