"""Vector search over the live face tracks, behind one protocol (VectorSearch) with two implementations.

- `PgVectorSearch`: on a PostgreSQL index whose server has pgvector, the `track_vectors` table
  (schemas/vectors.py) with its HNSW index, written in the same transaction as the tracks. Every host
  searching that database shares it; nothing is kept on disk beside it.
- `FaissFileIndex` everywhere else (SQLite, PostgreSQL without pgvector): a FAISS index derived from
  the SQL index, in `search-index/` beside the SQLite file (for other databases in the output folder):

    index.faiss   IndexIDMap2(IndexFlatL2) (exact) below VIDX_ANN_MIN_TRACKS live tracks, else an
                  IndexIVFScalarQuantizer (fp16 codes); FAISS ids are track ids
    mirror.npz    what the index mirrors: each video's run and commit time, each track's video
    state.json    version, kind, live tracks, the size of index.faiss, `dirty` while a refresh writes
    refresh.lock  exclusive for a refresh, shared for a search while it opens the index

After a job (`refresh_search_index`) and before a search, the file index compares the videos table
with mirror.npz and applies only the changes (`remove_ids` of changed or vanished videos' tracks,
`add_with_ids` of changed videos' current tracks). It is rebuilt from SQL when files are missing,
inconsistent or dirty, when the size crosses the exact/IVF switch, or when an IVF index grew to
several times the size its centroids were trained on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select, text

from catalog.db import Catalog
from schemas.errors import VidxError
from schemas.sql import Track, Video
from schemas.vectors import vector_literal

log = logging.getLogger(__name__)

DIM = 128
FORMAT_VERSION = 2
ANN_MIN_TRACKS = int(os.environ.get("VIDX_ANN_MIN_TRACKS", "2000000"))
"""From this many live tracks on, the file index is FAISS IVF; below, exact (flat)."""
RETRAIN_GROWTH = 4.0
"""Rebuild the IVF index once it holds this many times the tracks its centroids were trained on."""
PROBE_FRACTION = 16
"""IVF lists probed per query: nlist / 16 (256 of 4096 at 10M tracks: recall@10 0.956, docs/performance.md)."""
HNSW_EF_SEARCH = 100
"""pgvector HNSW candidate list per query (pgvector's default is 40; docs/search.md has the measured recall)."""


class SearchIndexError(VidxError):
    """The vector index cannot be read or written."""


class VectorSearch(Protocol):
    """The k nearest live tracks of query descriptors, wherever the vectors live."""

    @property
    def kind(self) -> str:
        """exact | ivf (FAISS file) | pgvector"""
        ...

    @property
    def live(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(L2 distances, track ids), each (len(queries), k), nearest first; id -1 and distance inf where fewer."""
        ...

    def within(self, queries: np.ndarray, radius: float, *, limit: int = 50_000) -> dict[int, float]: ...

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(track ids ascending, vectors) of the live tracks, for clustering."""
        ...


class RadiusSearch:
    """`within` on top of `search`: asks for more neighbours until the farthest is outside the radius."""

    @property
    def live(self) -> int:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def within(self, queries: np.ndarray, radius: float, *, limit: int = 50_000) -> dict[int, float]:
        """Every track within L2 `radius` of any query (up to `limit` per query): track id -> nearest distance."""
        k = min(256, max(self.live, 1))
        while True:
            dist, ids = self.search(queries, k)
            full = bool(np.any(np.isfinite(dist[:, -1]) & (dist[:, -1] <= radius))) and k < min(limit, self.live)
            if not full:
                break
            k = min(k * 4, limit, self.live)
        out: dict[int, float] = {}
        for row_d, row_i in zip(dist, ids, strict=True):
            for d, i in zip(row_d, row_i, strict=True):
                if i >= 0 and d <= radius and d < out.get(int(i), np.inf):
                    out[int(i)] = float(d)
        return out


def nprobe_for(nlist: int) -> int:
    return min(nlist, max(8, nlist // PROBE_FRACTION))


def ivf_lists_for(n: int) -> int:
    """IVF list count: about 4*sqrt(n) as a power of two, 64 to 4096 (more lists cost build time on few cores)."""
    target = max(64, min(4096, int(4 * np.sqrt(max(n, 1)))))
    lists = int(2 ** round(np.log2(target)))
    while lists > 1 and lists * 39 > n:  # k-means wants ~39 training points per list
        lists //= 2
    return lists


def build_ivf(vectors: np.ndarray, ids: np.ndarray, *, nlist: int | None = None, train_size: int = 262_144,
              seed: int = 0) -> Any:
    """A FAISS IVF index with fp16 scalar-quantised vectors (half the memory, distances within 1e-3)."""
    import faiss

    n = len(vectors)
    nlist = nlist or ivf_lists_for(n)
    quantizer = faiss.IndexFlatL2(DIM)
    index = faiss.IndexIVFScalarQuantizer(quantizer, DIM, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    rng = np.random.default_rng(seed)
    train_size = max(train_size, 40 * nlist)
    sample = vectors if n <= train_size else vectors[np.sort(rng.choice(n, train_size, replace=False))]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    _add(index, vectors, ids)
    index.nprobe = nprobe_for(nlist)
    return index


def build_flat(vectors: np.ndarray, ids: np.ndarray) -> Any:
    """Exact search: FAISS flat L2 with track ids (IndexIDMap2 also maps ids back to rows, for `rows`)."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatL2(DIM))
    _add(index, vectors, ids)
    return index


def _add(index: Any, vectors: np.ndarray, ids: np.ndarray, chunk: int = 500_000) -> None:
    for start in range(0, len(vectors), chunk):  # chunks: a float16 input is converted a piece at a time
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32),
                           np.ascontiguousarray(ids[start:start + chunk], dtype=np.int64))


def faiss_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search with L2 distances (not squared) and inf where fewer than k were found."""
    d2, ids = index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)
    return np.where(ids >= 0, np.sqrt(np.maximum(d2, 0)), np.inf).astype(np.float32), ids.astype(np.int64)


@dataclass
class Refresh:
    """What a refresh did."""

    kind: str
    live: int
    added: int = 0
    removed: int = 0
    rebuilt: bool = False
    reason: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def index_dir_for(catalog: Catalog, out_dir: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> Path:
    """Where the file index of this SQL index lives: beside the SQLite file, else in the output folder."""
    url = catalog.url
    if url.startswith("sqlite") and "///" in url:
        db = url.split("///", 1)[1]
        if db and db != ":memory:":
            return Path(db).expanduser().resolve().parent / "search-index"
    if out_dir is not None and "://" not in str(out_dir):
        return Path(out_dir).expanduser().resolve() / "search-index"
    from engines.sources import default_cache_dir

    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return (cache_dir or default_cache_dir()) / "search-index" / key


class FaissFileIndex(RadiusSearch):
    """The FAISS index file of one SQL index (the module docstring lists its files)."""

    def __init__(self, root: Path, catalog: Catalog):
        self.root = root
        self.catalog = catalog
        self.state: dict[str, Any] = {}
        self.index: Any = None

    @property
    def kind(self) -> str:
        return str(self.state.get("kind", "exact"))

    @property
    def live(self) -> int:
        return int(self.state.get("live", 0))

    def _path(self, name: str) -> Path:
        return self.root / name

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self._path("state.json").read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self._path(".state.json.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self._path("state.json"))
        self.state = state

    def stale_reason(self) -> str | None:
        """Why the files cannot be trusted as they are (None when they agree with state.json)."""
        state = self._read_state()
        if state is None:
            return "no index yet"
        if state.get("version") != FORMAT_VERSION:
            return "index written by another version"
        if state.get("dirty"):
            return "a refresh was interrupted"
        try:
            if self._path("index.faiss").stat().st_size != state.get("bytes"):
                return "index.faiss does not match state.json"
            if not self._path("mirror.npz").is_file():
                return "mirror.npz missing"
        except OSError:
            return "index.faiss missing"
        return None

    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self._path("refresh.lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ search

    def open(self) -> FaissFileIndex:
        """Load the index for searching (refresh first; this does not look at SQL)."""
        import faiss

        reason = self.stale_reason()
        if reason is not None:
            raise SearchIndexError(f"search index not usable: {reason}", path=self.root,
                                   hint="run `vidx index` or any search, which refreshes it")
        self.state = self._read_state() or {}
        path = str(self._path("index.faiss"))
        # Memory-mapped (IVF lists, or the flat codes): opening costs little at any size, pages are read on use,
        # and a refresh replaces the file by rename, so this mapping stays valid.
        mmap = faiss.IO_FLAG_MMAP if self.kind == "ivf" else faiss.IO_FLAG_MMAP_IFC
        try:
            self.index = faiss.read_index(path, mmap | faiss.IO_FLAG_READ_ONLY)
            if self.kind == "ivf":
                self.index.nprobe = int(self.state.get("nprobe", nprobe_for(int(self.index.nlist))))
        except RuntimeError as exc:
            raise SearchIndexError(f"cannot read the search index: {exc}", path=path,
                                   hint="delete the search-index folder; the next search rebuilds it") from exc
        if self.index.ntotal != self.live:
            raise SearchIndexError(f"index.faiss holds {self.index.ntotal} tracks, state.json says {self.live}",
                                   path=path, hint="delete the search-index folder; the next search rebuilds it")
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            raise SearchIndexError("search index not opened", path=self.root)
        return faiss_search(self.index, queries, k)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "exact" and self.index is not None:
            import faiss

            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            vectors = self.index.index.reconstruct_n(0, self.index.ntotal)
            order = np.argsort(ids, kind="stable")
            return ids[order], vectors[order]
        return sql_rows(self.catalog)  # IVF codes are fp16: clustering reads the exact vectors

    # ------------------------------------------------------------------ refresh

    def refresh(self, *, ann_min: int | None = None, force: bool = False) -> Refresh:
        """Bring the index up to date with the SQL index: incremental when possible, else a full rebuild."""
        t0 = time.perf_counter()
        ann_min = ANN_MIN_TRACKS if ann_min is None else ann_min
        with self.lock(exclusive=True):
            current = _sql_videos(self.catalog)
            reason = "forced" if force else self.stale_reason()
            if reason is None:
                self.state = self._read_state() or {}
                result = self._incremental(current, ann_min)
            else:
                result = self._rebuild(current, ann_min, reason)
        result.seconds = round(time.perf_counter() - t0, 3)
        if result.added or result.removed or result.rebuilt:
            log.info("search index %s: %s", self.root, result)
        return result

    def _rebuild(self, current: dict[int, tuple[int, float]], ann_min: int, reason: str) -> Refresh:
        self.root.mkdir(parents=True, exist_ok=True)
        for old in ("meta.json", "ids.i64", "videos.i64", "vectors.f32", "videos.npz", "ann.faiss"):
            self._path(old).unlink(missing_ok=True)  # the row files of the format this one replaced
        self._write_state({"version": FORMAT_VERSION, "dirty": True})
        ids, vids, vectors = _sql_tracks(self.catalog, None)
        kind = "ivf" if len(ids) >= ann_min else "exact"
        state: dict[str, Any] = {"version": FORMAT_VERSION, "kind": kind}
        if kind == "ivf":
            index = build_ivf(vectors, ids)
            state.update(trained_on=len(ids), nlist=int(index.nlist), nprobe=int(index.nprobe))
        else:
            index = build_flat(vectors, ids)
        del vectors
        self._save(index, state, current, ids, vids)
        return Refresh(kind, len(ids), added=len(ids), rebuilt=True, reason=reason)

    def _incremental(self, current: dict[int, tuple[int, float]], ann_min: int) -> Refresh:
        import faiss

        with np.load(self._path("mirror.npz")) as z:
            seen = {int(v): (int(r), float(t)) for v, r, t in zip(z["video"], z["run"], z["stamp"], strict=True)}
            track_ids, track_videos = z["track"], z["track_video"]
        changed = [v for v, stamp in current.items() if seen.get(v) != stamp]
        gone = [v for v in seen if v not in current]
        if not changed and not gone:
            return Refresh(self.kind, self.live)
        drop = np.isin(track_videos, np.asarray(changed + gone, np.int64))
        new_ids, new_vids, new_vectors = _sql_tracks(self.catalog, changed)
        live = len(track_ids) - int(drop.sum()) + len(new_ids)
        kind_now = "ivf" if live >= ann_min else "exact"
        grew = self.kind == "ivf" and live > RETRAIN_GROWTH * float(self.state.get("trained_on", live))
        if kind_now != self.kind or grew:
            why = "grew past the IVF training size" if grew else f"size {live} moves search to {kind_now}"
            return self._rebuild(current, ann_min, why)
        self._write_state({**self.state, "dirty": True})
        index: Any = faiss.read_index(str(self._path("index.faiss")))
        if index.ntotal != len(track_ids):
            return self._rebuild(current, ann_min, "index.faiss does not match mirror.npz")
        if drop.any():
            index.remove_ids(np.ascontiguousarray(track_ids[drop], dtype=np.int64))
        if len(new_ids):
            index.add_with_ids(np.ascontiguousarray(new_vectors, dtype=np.float32), new_ids)
        self._save(index, self.state, current, np.concatenate([track_ids[~drop], new_ids]),
                   np.concatenate([track_videos[~drop], new_vids]))
        return Refresh(self.kind, live, added=len(new_ids), removed=int(drop.sum()))

    def _save(self, index: Any, state: dict[str, Any], videos: dict[int, tuple[int, float]], track_ids: np.ndarray,
              track_videos: np.ndarray) -> None:
        """Write index and mirror under temporary names, then rename (a search that mapped the old file keeps
        reading it), then state.json, which clears `dirty`."""
        import faiss

        tmp = self._path(".index.faiss.tmp")
        faiss.write_index(index, str(tmp))
        size = tmp.stat().st_size
        os.replace(tmp, self._path("index.faiss"))
        keys = np.fromiter(videos.keys(), np.int64, len(videos))
        tmp_npz = self._path(".mirror.tmp.npz")
        np.savez(tmp_npz, video=keys, run=np.fromiter((videos[k][0] for k in keys), np.int64, len(keys)),
                 stamp=np.fromiter((videos[k][1] for k in keys), np.float64, len(keys)),
                 track=track_ids.astype(np.int64), track_video=track_videos.astype(np.int64))
        os.replace(tmp_npz, self._path("mirror.npz"))
        self._write_state({k: v for k, v in state.items() if k != "dirty"}
                          | {"live": len(track_ids), "bytes": size, "db": _redact(self.catalog.url),
                             "updated_at": time.time(), "dirty": False})


class PgVectorSearch(RadiusSearch):
    """Search in the database: pgvector's HNSW index over `track_vectors` (one query per statement)."""

    kind = "pgvector"

    def __init__(self, catalog: Catalog, *, ef_search: int = HNSW_EF_SEARCH):
        self.catalog = catalog
        self.ef_search = ef_search
        with catalog.engine.connect() as conn:
            self._live = int(conn.scalar(text("SELECT count(*) FROM track_vectors")) or 0)
            version = str(conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")))
        # Iterative scans (pgvector 0.8) let one query return more than ef_search rows, as `within` may ask.
        self.iterative = tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) >= (0, 8)

    @property
    def live(self) -> int:
        return self._live

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, np.float32))
        out_d = np.full((len(q), k), np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        stmt = text("SELECT track_id, embedding <-> CAST(:q AS vector) FROM track_vectors "
                    "ORDER BY embedding <-> CAST(:q AS vector) LIMIT :k")
        with self.catalog.engine.begin() as conn:
            # SET LOCAL takes no bound parameters; set_config(..., true) is the same, scoped to this transaction.
            conn.execute(text("SELECT set_config('hnsw.ef_search', :v, true)"),
                         {"v": str(min(1000, max(self.ef_search, k)))})
            if self.iterative and k > 1000:
                conn.execute(text("SELECT set_config('hnsw.iterative_scan', 'strict_order', true), "
                                  "set_config('hnsw.max_scan_tuples', :n, true)"), {"n": str(max(20_000, 4 * k))})
            for row, v in enumerate(q):
                found = conn.execute(stmt, {"q": vector_literal(v), "k": k}).all()
                if found:
                    out_i[row, :len(found)] = [r[0] for r in found]
                    out_d[row, :len(found)] = [r[1] for r in found]
        return out_d, out_i

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        return sql_rows(self.catalog)


def open_vector_search(catalog: Catalog, out_dir: str | None, *, index_dir: Path | None = None) -> VectorSearch:
    """pgvector where the database has it, else the file index (refreshed first, incrementally)."""
    if catalog.vectors_in_db:
        return PgVectorSearch(catalog)
    index = FaissFileIndex(index_dir or index_dir_for(catalog, out_dir), catalog)
    index.refresh()
    with index.lock(exclusive=False):
        return index.open()


def _redact(url: str) -> str:
    """The database URL without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


def _sql_videos(catalog: Catalog) -> dict[int, tuple[int, float]]:
    """Each indexed video's live run and commit time: what changes whenever its tracks change."""
    with catalog.session() as s:
        rows = s.execute(select(Video.id, Video.run_id, Video.indexed_at).where(Video.run_id.is_not(None))).all()
    return {int(v): (int(r or 0), t.timestamp() if t is not None else 0.0) for v, r, t in rows}


def _sql_tracks(catalog: Catalog, videos: list[int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(track ids, video ids, vectors) of the live tracks, of all videos or of the listed ones."""
    ids: list[int] = []
    vids: list[int] = []
    blobs: list[bytes] = []
    base = (select(Track.id, Track.video_id, Track.embedding).join(Video, Video.id == Track.video_id)
            .where(Track.run_id == Video.run_id))
    with catalog.session() as s:
        chunks = ([base.execution_options(yield_per=50_000)] if videos is None else
                  [base.where(Track.video_id.in_(videos[i:i + 500])) for i in range(0, len(videos), 500)])
        for stmt in chunks:
            for tid, vid, emb in s.execute(stmt):
                if len(emb) != DIM * 4:
                    raise SearchIndexError(f"track {tid} has a {len(emb) // 4}-D embedding, expected {DIM}",
                                           path=catalog.where)
                ids.append(tid)
                vids.append(vid)
                blobs.append(emb)
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, DIM), np.float32)
    vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), DIM)
    return np.asarray(ids, np.int64), np.asarray(vids, np.int64), vectors


def sql_rows(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(track ids ascending, vectors) of the live tracks, read from SQL."""
    ids, _, vectors = _sql_tracks(catalog, None)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


def refresh_search_index(catalog: Catalog, out_uri: str | None) -> Refresh:
    """Bring the file index of this SQL index up to date (incremental); called after every job. pgvector
    needs nothing: the job wrote the vectors with the tracks."""
    if catalog.vectors_in_db:
        return Refresh("pgvector", PgVectorSearch(catalog).live)
    return FaissFileIndex(index_dir_for(catalog, out_uri), catalog).refresh()


def refresh_after_job(catalog: Catalog, out_uri: str | None) -> None:
    """Refresh the search index once a job has ended; a failure is only a warning, since a search brings a
    stale index up to date itself."""
    try:
        refresh_search_index(catalog, out_uri)
    except Exception as exc:
        log.warning("refreshing the search index after the job failed: %s", exc)
