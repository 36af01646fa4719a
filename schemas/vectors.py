"""Face-track vectors in the database itself, on PostgreSQL servers with pgvector.

`track_vectors` (track id, vector(128)) with an HNSW index (vector_l2_ops) sits beside `tracks`: a row
per track whose embedding is finite, deleted with its track (ON DELETE CASCADE), written in the same
transaction as the tracks (catalog.db.record). It exists only where migration 0003 found the
`vector` extension (or could create it), so it is not one of the models: the models-versus-migrations
check leaves it out (`include_name`), and tests/test_search_postgres.py checks it instead.
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

TABLE = "track_vectors"
HNSW_INDEX = "ix_track_vectors_hnsw"


def vector_literal(v: np.ndarray | bytes) -> str:
    """pgvector's text form of a float32 vector; repr of each float32 (as a Python float) reads back exactly."""
    x = np.frombuffer(v, "<f4") if isinstance(v, bytes) else np.asarray(v, np.float32)
    return "[" + ",".join(map(repr, x.tolist())) + "]"


def is_finite(v: bytes) -> bool:
    """pgvector refuses NaN and infinity; such an embedding matches nothing anyway."""
    return bool(np.isfinite(np.frombuffer(v, "<f4")).all())


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic filter: the optional pgvector table is not compared with the models."""
    return not (type_ == "table" and name == TABLE)


def has_track_vectors(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql" and bool(
        conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": TABLE}))


def create_track_vectors(conn: Connection) -> bool:
    """Create `track_vectors` (and the extension if the server has it but this database does not), fill it
    from `tracks`, then build its HNSW index. False, changing nothing, where pgvector is not available."""
    if conn.dialect.name != "postgresql":
        return False
    row = conn.execute(text("SELECT installed_version FROM pg_available_extensions WHERE name = 'vector'")).first()
    if row is None:
        log.info("the PostgreSQL server has no pgvector: search uses the FAISS file index")
        return False
    if row[0] is None:
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError as exc:
            log.warning("pgvector is on the server but cannot be created in this database (%s): search uses "
                        "the FAISS file index; a superuser can run CREATE EXTENSION vector",
                        str(exc.orig).strip().splitlines()[0])
            return False
    conn.execute(text("CREATE TABLE track_vectors (track_id INTEGER PRIMARY KEY REFERENCES tracks (id) "
                      "ON DELETE CASCADE, embedding vector(128) NOT NULL)"))
    insert = text("INSERT INTO track_vectors (track_id, embedding) VALUES (:id, CAST(:v AS vector))")
    last = -1
    while True:  # in pages by id: an index of millions of tracks is never held in memory at once
        page = conn.execute(text("SELECT id, embedding FROM tracks WHERE id > :last ORDER BY id LIMIT 10000"),
                            {"last": last}).all()
        if not page:
            break
        rows = [{"id": tid, "v": vector_literal(emb)} for tid, emb in page if len(emb) == 512 and is_finite(emb)]
        if rows:
            conn.execute(insert, rows)
        last = page[-1][0]
    # Built after the fill: one HNSW build is much faster than as many single inserts into the graph.
    conn.execute(text("CREATE INDEX ix_track_vectors_hnsw ON track_vectors USING hnsw (embedding vector_l2_ops)"))
    return True


def insert_track_vectors(conn: Connection, tracks: list[tuple[int, bytes]]) -> None:
    """Write the vectors of newly added tracks (id, float32 bytes), in the caller's transaction."""
    rows = [{"id": tid, "v": vector_literal(emb)} for tid, emb in tracks if is_finite(emb)]
    if rows:
        conn.execute(text("INSERT INTO track_vectors (track_id, embedding) VALUES (:id, CAST(:v AS vector))"), rows)
