"""Schema migrations (Alembic): old indexes are upgraded in place on open, newer ones refused,
and the migrations build exactly the schema the models declare (a model change without a
migration fails here)."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, select, text

from catalog.db import Catalog
from schemas import migrations
from schemas.embeddings import embedding_from_bytes
from schemas.migrations import BASELINE, SchemaError, alembic_config, head_revision, schema_diff
from schemas.sql import Track, Video


def build_at(url: str, revision: str, *, pre_alembic: bool = False) -> None:
    """An index at an older schema revision holding one indexed video with one track."""
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    with engine.begin() as conn:
        if pre_alembic:  # vidx 0.1 made its tables with create_all and kept no alembic_version
            conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO runs (id, key, pipeline_version, models, params, created_at) "
                          "VALUES (:id, :key, :pv, :models, :params, :at)"),
                     {"id": 1, "key": "k" * 32, "pv": "1", "models": "{}", "params": "{}", "at": "2026-01-01"})
        conn.execute(text("INSERT INTO videos (id, path, size, mtime, fingerprint, status, run_id, updated_at) "
                          "VALUES (:id, :path, :size, :mtime, :fp, :status, :run, :at)"),
                     {"id": 7, "path": "/archive/old video.mp4", "size": 1234, "mtime": 1.5, "fp": "f" * 64,
                      "status": "indexed", "run": 1, "at": "2026-01-01"})
        conn.execute(text("INSERT INTO tracks (id, video_id, run_id, track_index, start_s, end_s, n_faces, embedding, "
                          "quality, best_pts_s, thumbnail) VALUES (1, 7, 1, 0, 1.0, 4.5, 8, :emb, 0.9, 2.0, 't.jpg')"),
                     {"emb": bytes(range(8)) * 64})
    engine.dispose()


def assert_data_intact(catalog: Catalog) -> None:
    with catalog.session() as s:
        video = s.get(Video, 7)
        track = s.scalar(select(Track).where(Track.video_id == 7))
        assert video is not None and (video.path, video.size, video.status) == ("/archive/old video.mp4", 1234,
                                                                                 "indexed")
        assert track is not None and (track.start_s, track.end_s, track.thumbnail) == (1.0, 4.5, "t.jpg")
        assert embedding_from_bytes(track.embedding).shape == (128,)


def test_migrations_build_exactly_the_models_schema(db_url: str) -> None:
    """If this fails, schemas/sql.py changed without a migration: `python -m schemas.migrations revision -m ...`."""
    catalog = Catalog(db_url)
    assert catalog.migration.before is None and catalog.migration.after == head_revision()
    diff = schema_diff(catalog.engine)
    assert diff == [], f"models and migrations differ (add a revision): {diff}"
    catalog.close()


def test_an_index_from_before_migrations_is_upgraded_in_place(db_url: str) -> None:
    build_at(db_url, BASELINE, pre_alembic=True)
    catalog = Catalog(db_url)
    assert catalog.migration.before == BASELINE and catalog.migration.after == head_revision()
    assert_data_intact(catalog)
    assert schema_diff(catalog.engine) == []
    catalog.close()


@pytest.mark.parametrize("revision", [r.revision for r in migrations.script().walk_revisions()][1:] or [BASELINE])
def test_every_older_revision_is_upgraded_with_its_data(db_url: str, revision: str) -> None:
    build_at(db_url, revision)
    catalog = Catalog(db_url)
    assert catalog.migration.before == revision
    assert_data_intact(catalog)
    assert schema_diff(catalog.engine) == []
    with catalog.engine.connect() as conn:
        assert migrations.current_revision(conn) == head_revision()
    catalog.close()
    assert Catalog(db_url).migration.before == head_revision()  # opening again changes nothing


def test_a_newer_schema_is_refused_with_a_clear_error(db_url: str) -> None:
    Catalog(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": "9999"})
    engine.dispose()
    with pytest.raises(SchemaError) as err:
        Catalog(db_url)
    assert "schema revision 9999, newer than this vidx knows" in err.value.message
    assert err.value.hint and "upgrade vidx" in err.value.hint


def test_concurrent_first_opens_of_an_empty_index_all_succeed(db_url: str) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Catalog(db_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = create_engine(db_url)
    assert {"videos", "tracks", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()
