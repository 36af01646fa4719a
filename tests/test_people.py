"""Named people, manual labels and clustering, on a copy of the indexed sample archive (real photos)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from catalog.db import Catalog, default_db_url
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from search.people import resolve_labels, track_rows_of
from vidx.cli import cli

TOL = 0.55
Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


@pytest.fixture(scope="module")
def people_out(private_out: Callable[[str], Path]) -> Path:
    return private_out("people")


def vidx(out: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def truth_of(videos: list[SampleVideo], person: str) -> list[tuple[str, float, float]]:
    return [(v.name, a.start_s, a.end_s) for v in videos for a in v.appearances if a.person == person]


def matches(hits: list[dict[str, Any]], truth: list[tuple[str, float, float]]) -> bool:
    return len(hits) == len(truth) and all(
        any(Path(h["video"]).name == n and abs(h["start_s"] - s) <= TOL and abs(h["end_s"] - e) <= TOL for h in hits)
        for n, s, e in truth)


def test_person_with_two_photos_is_found_by_name(indexed: Indexed, people_out: Path, cache_dir: Path) -> None:
    videos, _, _, _ = indexed
    added = vidx(people_out, "person", "add", "Barack Obama", str(photo_path("obama2", cache_dir)),
                 str(photo_path("obama", cache_dir)), "--device", "cpu")
    assert len(added["photos"]) == 2
    listed = {p["name"]: p for p in vidx(people_out, "person", "list")}
    assert listed["Barack Obama"]["exemplars"] == 2
    hits = vidx(people_out, "search", "--person", "Barack Obama", "--device", "cpu")
    assert matches(hits, truth_of(videos, "obama")), hits
    missing = CliRunner().invoke(cli, ["search", "--person", "Nobody", "--out", str(people_out)])
    assert missing.exit_code != 0 and "no person named 'Nobody'" in str(missing.exception)


def test_labels_survive_reclustering_and_named_people_never_merge(indexed: Indexed, people_out: Path,
                                                                  cache_dir: Path) -> None:
    videos, _, _, _ = indexed
    catalog = Catalog(default_db_url(people_out))
    clusters = vidx(people_out, "people", "cluster")
    biden_hits = vidx(people_out, "search", "--photo", str(photo_path("biden", cache_dir)), "--device", "cpu")
    biden_tracks = {t for h in biden_hits for t in h["track_ids"]}
    assert len(biden_tracks) == 2
    biden_cluster = [c for c in clusters if set(c["track_ids"]) & biden_tracks]
    assert len(biden_cluster) == 1 and set(biden_cluster[0]["track_ids"]) == biden_tracks, clusters

    # Name the whole cluster at once, and one track of another person by hand.
    done = vidx(people_out, "person", "label", "--cluster", str(biden_cluster[0]["id"]), "Joe Biden")
    assert sorted(done["labelled"]) == sorted(biden_tracks)
    group = [c for c in clusters if c["person"] is None and not set(c["track_ids"]) & biden_tracks]
    other = next(t for c in group for t in c["track_ids"]) if group else None
    if other is None:  # no other cluster: label any other track
        other = next(h["track_id"] for h in vidx(people_out, "search", "--photo",
                                                  str(photo_path("obama2", cache_dir)), "--device", "cpu"))
    vidx(people_out, "person", "label", str(other), "Someone Else")
    before = resolve_labels(catalog)
    assert len(before) == 3

    # Re-cluster so loosely that every track falls into one cluster: the two people are still kept apart.
    loose = vidx(people_out, "people", "cluster", "--eps", "1.5", "--min-samples", "1")
    for c in loose:
        rows = track_rows_of(catalog, c["track_ids"])
        named = {before[t][0] for t in rows if t in before}
        assert len(named) <= 1, c
    assert {c["person"] for c in loose} >= {"Joe Biden", "Someone Else"}
    assert resolve_labels(catalog) == before  # clustering never touches labels

    # Labels are facts: a search by name returns them, marked as labelled, and nobody labelled as another person.
    hits = vidx(people_out, "search", "--person", "Joe Biden", "--device", "cpu")
    assert matches(hits, truth_of(videos, "biden")) and all(h["labelled"] for h in hits)
    assert other not in {t for h in hits for t in h["track_ids"]}

    # A track already labelled as someone else is not relabelled silently; unlabel frees it.
    clash = CliRunner().invoke(cli, ["person", "label", str(other), "Joe Biden", "--out", str(people_out)])
    assert clash.exit_code != 0 and "labelled as someone else" in str(clash.exception)
    assert vidx(people_out, "person", "unlabel", str(other))["removed"] == 1
    assert len(resolve_labels(catalog)) == 2


def test_labels_follow_a_video_through_reprocessing(people_out: Path, cache_dir: Path) -> None:
    """Re-indexing makes new track rows; a label still applies to the new track of the same face and time."""
    from sqlalchemy import select

    from catalog.outcome import TrackRow, VideoOutcome
    from schemas.sql import Track, Video

    catalog = Catalog(default_db_url(people_out))
    hit = next(h for h in vidx(people_out, "search", "--photo", str(photo_path("obama2", cache_dir)),
                               "--device", "cpu") if h["video"].endswith("interview_hevc.mp4"))
    vidx(people_out, "person", "label", str(hit["track_id"]), "Interviewee")
    with catalog.session() as s:
        video = s.scalar(select(Video).where(Video.path.like("%/interview_hevc.mp4")))
        assert video is not None
        old = list(s.scalars(select(Track).where(Track.video_id == video.id)))
    run = catalog.ensure_run("reprocessed", "test", {}, {"sampling": {"mode": "fps", "fps": 2.0}})
    # A new run with an extra track in front: the labelled face's row id and index both change.
    rows = [TrackRow(t.track_index + 1, t.start_s, t.end_s, t.n_faces, t.embedding, t.quality, t.best_pts_s,
                     t.thumbnail) for t in old]
    other = next(t for t in vidx(people_out, "search", "--photo", str(photo_path("biden", cache_dir)),
                                 "--device", "cpu"))
    with catalog.session() as s:
        stranger = s.get(Track, track_rows_of(catalog, [other["track_id"]])[0])
        assert stranger is not None
        rows.insert(0, TrackRow(0, hit["start_s"], hit["end_s"], 3, stranger.embedding, 1.0, hit["start_s"], None))
    catalog.record(VideoOutcome(video.id, "done", duration_s=video.duration_s, tracks=rows), run)
    resolved = resolve_labels(catalog, {video.id})
    assert len(resolved) == 1
    new_track = next(iter(resolved))
    labelled = next(t for t in old if t.public_id == hit["track_id"])
    with catalog.session() as s:  # the new run's row of the labelled face, not the stranger beside it
        t = s.get(Track, new_track)
        assert t is not None and t.embedding == labelled.embedding and t.run_id == run.id
    found = vidx(people_out, "search", "--person", "Interviewee", "--device", "cpu")
    assert any(h["video"].endswith("interview_hevc.mp4") and h["labelled"] and h["track_id"] == t.public_id
               for h in found)


def test_dbscan_finds_identities_exactly_and_through_ivf() -> None:
    import numpy as np

    from bench.search import SyntheticFaces, real_mean_descriptor
    from search.people import dbscan

    mean, _ = real_mean_descriptor(strict=True)
    faces = SyntheticFaces(20_000, mean, seed=5)
    x = faces.all()
    for limit in (10**9, 0):  # exact neighbourhoods, then IVF ones
        labels = dbscan(x, 0.5, 2, exact_limit=limit)
        clusters = np.unique(labels[labels >= 0])
        assert all(len(set(faces.identity[labels == c])) == 1 for c in clusters)  # never two identities
        repeated = [i for i, n in zip(*np.unique(faces.identity, return_counts=True), strict=True) if n >= 2]
        assert len(clusters) <= len(repeated) * 1.02  # and (almost) never an identity split


def test_cluster_ids_stay_the_same_across_runs(private_out: Callable[[str], Path]) -> None:
    """Re-clustering unchanged tracks keeps every cluster's id, so `person label --cluster C` names the same faces."""
    out = private_out("stable_clusters")
    first = {c["id"]: sorted(c["track_ids"]) for c in vidx(out, "people", "cluster")}
    assert first
    second = {c["id"]: sorted(c["track_ids"]) for c in vidx(out, "people", "cluster")}
    assert second == first
    cid, members = next(iter(first.items()))
    done = vidx(out, "person", "label", "--cluster", str(cid), "Same Face")
    assert sorted(done["labelled"]) == members
