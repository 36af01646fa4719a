"""Search, named people, labels and clustering with the SQL index on PostgreSQL (VIDX_TEST_POSTGRES_URL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engines.photos import photo_path
from jobs.catalog import Catalog
from jobs.runner import JobResult
from vidx.cli import cli
from vidx.people import resolve_labels
from vidx.sample_archive import SampleVideo

TOL = 0.55
Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


def vidx(out: Path, url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--db", url, "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


@pytest.mark.postgres
def test_search_people_and_clusters_on_postgres(indexed_postgres: Indexed, cache_dir: Path) -> None:
    videos, out, catalog, _ = indexed_postgres
    url = catalog.url
    truth = [(v.name, a.start_s, a.end_s) for v in videos for a in v.appearances if a.person == "obama"]
    for args in (["search", "--photo", str(photo_path("obama2", cache_dir)), "--device", "cpu"],
                 ["search", "--person", "Obama", "--device", "cpu"]):
        if "--person" in args:
            vidx(out, url, "person", "add", "Obama", str(photo_path("obama2", cache_dir)),
                 str(photo_path("obama3", cache_dir)), "--device", "cpu")
        hits = vidx(out, url, *args)
        assert len(hits) == len(truth), hits
        for name, start, end in truth:
            assert any(Path(h["video"]).name == name and abs(h["start_s"] - start) <= TOL
                       and abs(h["end_s"] - end) <= TOL for h in hits), (name, hits)
    assert (out / "search-index" / "meta.json").is_file()  # beside the outputs when the database is a server

    clusters = vidx(out, url, "people", "cluster")
    obama_tracks = {t for h in hits for t in h["track_ids"]}
    cluster = next(c for c in clusters if set(c["track_ids"]) & obama_tracks)
    assert set(cluster["track_ids"]) == obama_tracks
    vidx(out, url, "person", "label", "--cluster", str(cluster["id"]), "Obama")
    before = resolve_labels(catalog)
    assert set(before) == obama_tracks
    vidx(out, url, "people", "cluster", "--eps", "1.5", "--min-samples", "1")
    assert resolve_labels(catalog) == before
    listed = {p["name"]: p for p in vidx(out, url, "person", "list")}
    assert listed["Obama"] == {**listed["Obama"], "exemplars": 2, "labels": len(obama_tracks)}
