"""`vidx search --photo` on the indexed sample archive (real photos), against its ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from catalog.db import Catalog
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from search.query import DEFAULT_THRESHOLD, distance_from_score, score_from_distance
from vidx.cli import cli

INTERVAL = 0.5  # the fixture samples 2 frames per second
TOL = INTERVAL + 0.05

Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


def run_search(out: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["search", *args, "--out", str(out), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    hits = json.loads(result.stdout)
    assert isinstance(hits, list)
    return hits


def truth_of(videos: list[SampleVideo], person: str) -> list[tuple[str, float, float]]:
    return [(v.name, a.start_s, a.end_s) for v in videos for a in v.appearances if a.person == person]


def assert_hits_match(hits: list[dict[str, Any]], truth: list[tuple[str, float, float]]) -> None:
    """Every true appearance found once with its times (one sampling interval), and nothing else."""
    assert len(hits) == len(truth), [(Path(h["video"]).name, h["start_s"], h["end_s"], h["score"]) for h in hits]
    for name, start, end in truth:
        mine = [h for h in hits if Path(h["video"]).name == name and abs(h["start_s"] - start) <= TOL]
        assert len(mine) == 1, (name, start, hits)
        assert abs(mine[0]["end_s"] - end) <= TOL, (name, end, mine[0])


@pytest.mark.parametrize(("photo", "person"), [("obama2", "obama"), ("biden", "biden")])
def test_photo_finds_every_appearance_and_no_one_else(indexed: Indexed, cache_dir: Path, photo: str,
                                                      person: str) -> None:
    """obama2.jpg is in no video; biden.jpg is. Default threshold: all of that person, nobody else."""
    videos, out, _, _ = indexed
    hits = run_search(out, "--photo", str(photo_path(photo, cache_dir)))
    assert_hits_match(hits, truth_of(videos, person))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert h["score"] >= DEFAULT_THRESHOLD and h["track_id"] == f"{h['video_id']}-{h['track_id'].split('-')[1]}"
        assert h["track_id"] in h["track_ids"]
        assert Path(h["thumbnail"]).is_file() and Path(h["video"]).is_file()
        assert Path(h["thumbnail"]).name == f"{h['track_id']}.jpg"  # thumbnails are named by the public id


def test_nobody_else_scores_near_the_threshold(indexed: Indexed, cache_dir: Path) -> None:
    """With the threshold at 0 every track comes back; the best other person stays far below the default."""
    videos, out, _, _ = indexed
    hits = run_search(out, "--photo", str(photo_path("obama2", cache_dir)), "--threshold", "0", "--top", "100")
    obama = {(n, s) for n, s, _ in truth_of(videos, "obama")}
    others = [h for h in hits if not any(Path(h["video"]).name == n and abs(h["start_s"] - s) <= TOL
                                         for n, s in obama)]
    assert others, "the archive has other people"
    assert max(h["score"] for h in others) < DEFAULT_THRESHOLD / 2


def test_filters_by_video_and_time(indexed: Indexed, cache_dir: Path) -> None:
    _, out, _, _ = indexed
    photo = str(photo_path("obama2", cache_dir))
    only = run_search(out, "--photo", photo, "--video", "*interview*")
    assert [Path(h["video"]).name for h in only] == ["interview_hevc.mp4"]
    late = run_search(out, "--photo", photo, "--after", "3.8")  # meeting 0.5-3.5 ends before, interview 1-4 not
    assert [Path(h["video"]).name for h in late] == ["interview_hevc.mp4"]
    early = run_search(out, "--photo", photo, "--before", "0.8")  # only the meeting starts before 0.8 s
    assert [Path(h["video"]).name for h in early] == ["meeting_h264.mp4"]
    assert run_search(out, "--photo", photo, "--top", "1")[0]["score"] == max(h["score"] for h in late + early)


def test_photo_without_a_face_fails_clearly(indexed: Indexed, tmp_path: Path) -> None:
    _, out, _, _ = indexed
    y, x = np.mgrid[0:240, 0:320]
    landscape = np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    photo = tmp_path / "landscape.png"
    Image.fromarray(landscape).save(photo)
    proc = subprocess.run([sys.executable, "-m", "vidx", "search", "--photo", str(photo), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "no face found in the photo" in message and "landscape.png" in message


def test_face_option_out_of_range_names_the_count(indexed: Indexed, cache_dir: Path) -> None:
    _, out, _, _ = indexed
    result = CliRunner().invoke(cli, ["search", "--photo", str(photo_path("obama2", cache_dir)), "--face", "3",
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code != 0 and "has 1 face(s)" in str(result.exception)


def test_score_calibration_points() -> None:
    assert float(score_from_distance(0.6)) == pytest.approx(0.5)
    assert float(score_from_distance(0.45)) == pytest.approx(0.95, abs=0.003)
    assert distance_from_score(DEFAULT_THRESHOLD) == pytest.approx(0.545, abs=0.001)
    assert float(score_from_distance(distance_from_score(0.8))) == pytest.approx(0.8)
