"""The FAISS file index: incremental refresh after a video is re-indexed, stale files rebuilt, exact vs IVF."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from bench.search import SyntheticFaces, real_mean_descriptor
from catalog.db import Catalog, default_db_url
from catalog.outcome import TrackRow, VideoOutcome
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from schemas.sql import Track, Video
from search.query import open_search_index, query_embedding, search_index
from search.vector_index import FaissFileIndex, build_flat, build_ivf, faiss_search, index_dir_for, sql_rows

Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


@pytest.fixture(scope="module")
def copy_out(private_out: Callable[[str], Path]) -> Path:
    return private_out("index")


def reindex_video(catalog: Catalog, name: str, run_key: str) -> list[int]:
    """Commit a video again under a new run (as a reprocessing job does): new track rows replace the old."""
    with catalog.session() as s:
        video = s.scalar(select(Video).where(Video.path.like(f"%/{name}")))
        assert video is not None
        old = list(s.scalars(select(Track).where(Track.video_id == video.id)))
    run = catalog.ensure_run(run_key, "test", {}, {"sampling": {"mode": "fps", "fps": 2.0}})
    tracks = [TrackRow(t.track_index, t.start_s, t.end_s, t.n_faces, t.embedding, t.quality, t.best_pts_s,
                       t.thumbnail) for t in old]
    catalog.record(VideoOutcome(video.id, "done", duration_s=video.duration_s, tracks=tracks), run)
    return [t.id for t in old]


@pytest.mark.parametrize("ann_min", [10**9, 1], ids=["exact", "ivf"])
def test_refresh_is_incremental_and_search_follows_reindexing(indexed: Indexed, copy_out: Path, engines: object,
                                                              cache_dir: Path, ann_min: int) -> None:
    catalog = Catalog(default_db_url(copy_out))
    index = FaissFileIndex(index_dir_for(catalog, str(copy_out)) / f"min{ann_min}", catalog)
    first = index.refresh(ann_min=ann_min)
    assert first.rebuilt and first.kind == ("ivf" if ann_min == 1 else "exact") and first.live > 0
    assert index.refresh(ann_min=ann_min).added == 0  # nothing changed: nothing done

    old_ids = reindex_video(catalog, "meeting_h264.mp4", f"rerun-{ann_min}")
    again = index.refresh(ann_min=ann_min)
    assert not again.rebuilt and again.removed == len(old_ids) and again.added == len(old_ids)
    assert again.live == first.live
    index.open()
    rows, truth = index.rows(), sql_rows(catalog)  # for clustering: the live tracks as SQL holds them
    assert np.array_equal(rows[0], truth[0]) and np.array_equal(rows[1], truth[1])

    query, _ = query_embedding(engines, photo_path("obama2", cache_dir))  # type: ignore[arg-type]
    hits = search_index(catalog, index, query)
    meeting = [h for h in hits if h.video.endswith("meeting_h264.mp4")]
    with catalog.session() as s:
        live = {t.public_id for t in s.scalars(select(Track).join(Video, Video.id == Track.video_id)
                                               .where(Video.path.like("%/meeting_h264.mp4"),
                                                      Track.run_id == Video.run_id))}
    assert len(meeting) == 1 and meeting[0].track_id in live
    assert {Path(h.video).name for h in hits} == {"meeting_h264.mp4", "interview_hevc.mp4"}

    # An interrupted refresh leaves the index dirty: the next refresh rebuilds it from SQL.
    state = json.loads((index.root / "state.json").read_text())
    (index.root / "state.json").write_text(json.dumps({**state, "dirty": True}))
    assert index.stale_reason() == "a refresh was interrupted"
    rebuilt = index.refresh(ann_min=ann_min)
    assert rebuilt.rebuilt and rebuilt.live == first.live


def test_search_refreshes_a_stale_index_by_itself(indexed: Indexed, copy_out: Path) -> None:
    catalog = Catalog(default_db_url(copy_out))
    root = index_dir_for(catalog, str(copy_out))
    index = open_search_index(catalog, str(copy_out))
    assert root.is_dir() and index.live > 0
    (root / "index.faiss").write_bytes(b"damaged")
    assert open_search_index(catalog, str(copy_out)).live == index.live


def test_synthetic_descriptors_look_like_dlib() -> None:
    mean, _ = real_mean_descriptor(strict=True)
    faces = SyntheticFaces(50_000, mean, seed=3)
    stats = faces.check(faces.all())
    assert 0.3 <= stats["same_p50"] <= 0.5 and 0.8 <= stats["diff_p50"] <= 1.0
    assert stats["same_p95"] < 0.6 < stats["diff_p5"]


def test_ivf_agrees_with_exact_search() -> None:
    mean, _ = real_mean_descriptor(strict=True)
    faces = SyntheticFaces(40_000, mean, seed=4)
    x = faces.all()
    ids = np.arange(len(x), dtype=np.int64) * 3 + 7  # track ids are not row numbers
    queries, strangers = faces.queries(100, seed=9)
    exact_d, exact_i = faiss_search(build_flat(x, ids), queries, 10)
    brute = np.argsort(((x[None, :, :] - queries[:5, None, :]) ** 2).sum(-1), axis=1)[:, :10]
    assert np.array_equal(exact_i[:5], ids[brute])
    ivf = build_ivf(x, ids)
    ivf.nprobe = 32
    d2, ann_i = ivf.search(queries, 10)
    known = ~strangers
    recall = np.mean([len(set(ann_i[i]) & set(exact_i[i])) / 10 for i in np.nonzero(known)[0]])
    assert recall >= 0.95
    same = ann_i[:, 0] == exact_i[:, 0]  # where IVF found the true nearest, only fp16 codes change its distance
    assert same[known].mean() >= 0.95
    assert np.allclose(np.sqrt(d2[same, 0]), exact_d[same, 0], atol=2e-3)


def test_a_job_run_from_the_command_line_refreshes_the_index(indexed: Indexed, copy_out: Path) -> None:
    """After `vidx index` the file index mirrors the SQL index: the CLI refreshes it explicitly once a job ends
    (the job runner knows nothing of search), even when the job had nothing to do."""
    from click.testing import CliRunner

    from search.vector_index import refresh_search_index
    from vidx.cli import cli

    videos = indexed[0]
    catalog = Catalog(default_db_url(copy_out))
    index_dir = index_dir_for(catalog, str(copy_out))
    shutil.rmtree(index_dir, ignore_errors=True)
    result = CliRunner().invoke(cli, ["index", str(Path(videos[0].path).parent), "--out", str(copy_out),
                                      "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert FaissFileIndex(index_dir, catalog).stale_reason() is None
    again = refresh_search_index(catalog, str(copy_out))
    assert again.added == 0 and again.live > 0
