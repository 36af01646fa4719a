"""Real surveillance footage through the whole indexer on the CPU: OpenCV's vtest.avi (768x576, 4-9
pedestrians at a time), a few seconds of it cut and re-encoded here, never committed."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.dataset as ds
import pytest

from catalog.db import Catalog, default_db_url
from engines.photos import video_path
from jobs.runner import LocalExecutor, run_job
from schemas.config import IndexSettings, RuntimeConfig
from schemas.tables import PERSON_TRACKS, PERSONS

START_S = 20
"""From 20 s to 25 s six or seven people are in view (counted by eye at 20 s: seven)."""
SECONDS = 5


def cut(source: Path, target: Path, start_s: int, seconds: int) -> int:
    """`seconds` of a video from `start_s` re-encoded as H.264 at its own rate; returns the frame count."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        rate = Fraction(stream_in.average_rate or 10)
        out = dst.add_stream("libx264", rate=rate)
        out.width, out.height, out.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        out.options = {"crf": "18", "preset": "veryfast"}
        n = skipped = 0
        for frame in src.decode(stream_in):
            if skipped < start_s * rate:
                skipped += 1
                continue
            if n >= seconds * rate:
                break
            image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            image.pts, image.time_base = n, 1 / rate
            dst.mux(out.encode(image))
            n += 1
        dst.mux(out.encode(None))
    return n


@pytest.fixture(scope="module")
def vtest_out(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The cut indexed on the CPU at the default 2 fps: its output folder (index inside)."""
    root = tmp_path_factory.mktemp("footage")
    (root / "archive").mkdir()
    assert cut(video_path("vtest", cache_dir), root / "archive" / "vtest.mp4", START_S, SECONDS) == SECONDS * 10
    out = root / "out"
    catalog = Catalog(default_db_url(out))
    result = run_job(root / "archive", catalog=catalog, out_uri=str(out),
                     settings=IndexSettings(runtime=RuntimeConfig(device="cpu")), executor=LocalExecutor(),
                     cache_dir=cache_dir)
    catalog.close()
    assert result.summary.done == 1, result.summary
    return out


@pytest.fixture(scope="module")
def vtest_persons(vtest_out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frame index and box of every person the indexer found in the cut."""
    table = ds.dataset(vtest_out / "persons", format="parquet", schema=PERSONS).to_table()
    return table.column("frame_index").to_numpy(), np.asarray(table.column("bbox").to_pylist(), np.float32)


def test_several_people_per_analysed_frame(vtest_persons: tuple[np.ndarray, np.ndarray]) -> None:
    """Six or seven pedestrians are in view in these seconds; each analysed frame has several person rows."""
    frames, _ = vtest_persons
    counts = np.bincount(np.unique(frames, return_inverse=True)[1])
    assert len(counts) == SECONDS * 2  # every analysed frame had people
    assert counts.mean() >= 5 and counts.min() >= 4, counts


def test_person_boxes_where_people_walk(vtest_persons: tuple[np.ndarray, np.ndarray]) -> None:
    """Upright boxes of walking people, on the paths and the lawn below the building's wall (y > 100),
    inside the 768x576 frame, 40-250 px tall at this distance."""
    _, boxes = vtest_persons
    x0, y0, x1, y1 = boxes.T
    assert np.all((x0 >= 0) & (y0 >= 0) & (x1 <= 768) & (y1 <= 576))
    heights, widths = y1 - y0, x1 - x0
    assert np.all((heights > 40) & (heights < 250)), heights
    assert np.mean(heights > 1.5 * widths) > 0.9
    assert np.all((y0 + y1) / 2 > 100)


def test_person_tracks_follow_the_walkers_and_the_index_counts_them(vtest_out: Path) -> None:
    """The walkers become person tracks that last seconds, not one per sighting; `vidx people timeline`
    answers from the index how many people were tracked when: six or seven at most, as counted by eye."""
    from click.testing import CliRunner

    from vidx.cli import cli

    tracks = ds.dataset(vtest_out / "person_tracks", format="parquet", schema=PERSON_TRACKS).to_table()
    persons = ds.dataset(vtest_out / "persons", format="parquet", schema=PERSONS).to_table()
    spans = np.asarray(tracks.column("end_s").to_pylist()) - np.asarray(tracks.column("start_s").to_pylist())
    assert 5 <= tracks.num_rows <= 14, tracks.num_rows  # 6-7 walkers; some lost and found again
    assert np.median(spans) >= 2.0, spans  # most walkers are followed for most of the 5 s
    tracked = persons.column("person_track_id").drop_null()
    assert len(tracked) >= 0.9 * persons.num_rows  # nearly every box belongs to a track
    result = CliRunner().invoke(cli, ["people", "timeline", "vtest.mp4", "--out", str(vtest_out), "--json"])
    assert result.exit_code == 0, result.output
    timeline = json.loads(result.stdout)
    listed = {t["person_track_id"] for t in timeline["person_tracks"]}
    assert listed == set(tracks.column("person_track_id").to_pylist())
    assert 5 <= timeline["max_people"] <= 8, timeline["segments"]
    assert all(seg["start_s"] < seg["end_s"] for seg in timeline["segments"])
