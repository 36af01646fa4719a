"""Search, named people, labels and clustering with the SQL index on PostgreSQL (VIDX_TEST_POSTGRES_URL), and
pgvector: the vectors kept with the tracks, and searches that answer exactly as the FAISS file index does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import skip_or_fail
from sqlalchemy import select, text
from test_migrations import build_at

from catalog.db import Catalog
from catalog.outcome import TrackRow, VideoOutcome
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from schemas.sql import Track, Video
from schemas.vectors import HNSW_INDEX, TABLE
from search.people import resolve_labels, track_rows_of
from search.query import open_search_index, query_embedding, search_index
from search.vector_index import FaissFileIndex, PgVectorSearch
from vidx.cli import cli

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
    assert not (out / "search-index").exists()  # pgvector: the database is the whole index, shared by every host

    clusters = vidx(out, url, "people", "cluster")
    obama_tracks = {t for h in hits for t in h["track_ids"]}
    cluster = next(c for c in clusters if set(c["track_ids"]) & obama_tracks)
    assert set(cluster["track_ids"]) == obama_tracks
    vidx(out, url, "person", "label", "--cluster", str(cluster["id"]), "Obama")
    before = resolve_labels(catalog)
    assert set(before) == set(track_rows_of(catalog, sorted(obama_tracks)))  # labels are keyed by SQL row
    vidx(out, url, "people", "cluster", "--eps", "1.5", "--min-samples", "1")
    assert resolve_labels(catalog) == before
    listed = {p["name"]: p for p in vidx(out, url, "person", "list")}
    assert listed["Obama"] == {**listed["Obama"], "exemplars": 2, "labels": len(obama_tracks)}


def require_pgvector(catalog: Catalog) -> None:
    if not catalog.vectors_in_db:
        skip_or_fail(f"the PostgreSQL server of {catalog.where} has no pgvector (.ci/postgres starts one that has)")


def track_vectors(catalog: Catalog) -> dict[int, np.ndarray]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT track_id, embedding::text FROM {TABLE}")).all()  # noqa: S608 (a constant)
    return {tid: np.asarray(json.loads(v), np.float32) for tid, v in rows}


@pytest.mark.postgres
def test_pgvector_answers_exactly_as_the_faiss_file_index(indexed_postgres: Indexed, engines: object,
                                                          cache_dir: Path, tmp_path: Path) -> None:
    _, out, catalog, _ = indexed_postgres
    require_pgvector(catalog)
    pg = open_search_index(catalog, str(out))
    assert isinstance(pg, PgVectorSearch) and pg.kind == "pgvector"
    with catalog.engine.connect() as conn:
        assert "USING hnsw (embedding vector_l2_ops)" in str(conn.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": HNSW_INDEX}))
    faiss_index = FaissFileIndex(tmp_path / "search-index", catalog)
    faiss_index.refresh()
    faiss_index.open()
    ids, vectors = pg.rows()
    assert pg.live == faiss_index.live == len(ids) > 0
    assert track_vectors(catalog).keys() == set(ids.tolist())
    assert all(np.array_equal(v, vectors[ids == tid][0]) for tid, v in track_vectors(catalog).items())

    # Every track as a query: the same neighbours in the same order, the same distances.
    d_pg, i_pg = pg.search(vectors, 10)
    d_faiss, i_faiss = faiss_index.search(vectors, 10)
    assert np.array_equal(i_pg, i_faiss) and np.allclose(d_pg, d_faiss, atol=1e-5)
    everything = pg.within(vectors[:3], radius=10.0)
    assert everything.keys() == set(ids.tolist())
    assert all(abs(d - faiss_index.within(vectors[:3], radius=10.0)[t]) < 1e-5 for t, d in everything.items())
    for name in ("obama2", "biden", "astronaut"):
        query, _ = query_embedding(engines, photo_path(name, cache_dir))  # type: ignore[arg-type]
        hits = [h.to_json() for h in search_index(catalog, pg, query, threshold=0.05)]
        assert hits and hits == [h.to_json() for h in search_index(catalog, faiss_index, query, threshold=0.05)]


@pytest.mark.postgres
def test_tracks_and_their_vectors_are_written_and_replaced_together(postgres_url: str) -> None:
    catalog = Catalog(postgres_url)
    require_pgvector(catalog)
    with catalog.session() as s:
        video = Video(path="/archive/a.mp4", size=1, mtime=0.0, fingerprint="f")
        s.add(video)
        s.flush()
        video_id = video.id
    rng = np.random.default_rng(0)

    def record(key: str, n: int) -> set[int]:
        run = catalog.ensure_run(key, "test", {}, {})
        embs = [rng.standard_normal(128).astype("<f4") for _ in range(n)]
        embs[0][5] = np.nan  # a broken descriptor has no vector (pgvector refuses NaN) but the track is kept
        catalog.record(VideoOutcome(video_id, "done", tracks=[
            TrackRow(i, i, i + 1.0, 3, e.tobytes(), 1.0, i + 0.5, None) for i, e in enumerate(embs)]), run)
        with catalog.session() as s:
            tracks = {t.id: t for t in s.scalars(select(Track).where(Track.video_id == video_id))}
        stored = track_vectors(catalog)
        assert stored.keys() == set(tracks) - {min(tracks)} and len(tracks) == n
        assert all(np.array_equal(v, np.frombuffer(tracks[t].embedding, "<f4")) for t, v in stored.items())
        return set(tracks)

    first = record("r1", 5)
    second = record("r2", 3)  # reprocessed: the old tracks' vectors are gone with them
    assert not first & second
    catalog.close()


@pytest.mark.postgres
def test_an_older_index_gets_its_vectors_when_upgraded(postgres_url: str) -> None:
    build_at(postgres_url, "0002")
    catalog = Catalog(postgres_url)
    require_pgvector(catalog)
    assert catalog.migration.before == "0002"
    with catalog.session() as s:
        track = s.scalar(select(Track))
    assert track is not None
    assert list(track_vectors(catalog)) == [track.id]
    assert np.array_equal(track_vectors(catalog)[track.id], np.frombuffer(track.embedding, "<f4"))
    catalog.close()
