"""The vector index of face tracks: exact search for small indexes, FAISS IVF for large ones.

The SQL index stays the source of truth; this is a derived, persisted copy of the live tracks'
embeddings kept next to it (folder `search-index/` beside the SQLite file, or in the output folder
for other databases):

    meta.json      format, dimension, rows, kind (exact | ivf), a `dirty` flag, the SQL state it mirrors
    refresh.lock   taken exclusively by a refresh, shared by a search while it opens the files
    ids.i64        track id per row, -1 for a removed row (tombstone)        (append-only, raw int64)
    videos.i64     video id per row                                          (append-only, raw int64)
    vectors.f32    128 float32 per row                                       (append-only, raw float32)
    videos.npz     video id -> (run id, indexed_at) as last mirrored: what tells which videos changed
    ann.faiss      the FAISS IVF index (ids are track ids) when the index is large

After a job, `refresh_search_index` compares the videos table with videos.npz, tombstones the rows
of changed or vanished videos, appends the current tracks of changed videos, and applies the same
removals and additions to the FAISS index (`remove_ids`, `add_with_ids`): no full rebuild. A full
rebuild happens only when the files are missing, inconsistent or `dirty` (a refresh died midway),
when the index crosses the size at which exact and ANN search change places, or when it grew to
several times the size its IVF centroids were trained on.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from jobs.catalog import Catalog
from schemas.errors import VidxError
from schemas.sql import Track, Video

log = logging.getLogger(__name__)

DIM = 128
FORMAT = "vidx-search-index"
FORMAT_VERSION = 1
ANN_MIN_TRACKS = int(os.environ.get("VIDX_ANN_MIN_TRACKS", "2000000"))
"""From this many live tracks on, search goes through the FAISS IVF index; below, exact (numpy / CuPy)."""
RETRAIN_GROWTH = 4.0
"""Rebuild the IVF index once it holds this many times the tracks its centroids were trained on."""
COMPACT_FRACTION = 0.3
"""Rewrite the row files once this fraction of rows are tombstones."""
PROBE_FRACTION = 16
"""IVF lists probed per query: nlist / 16 (256 of 4096 at 10M tracks: recall@10 0.956, docs/performance.md)."""


def nprobe_for(nlist: int) -> int:
    return min(nlist, max(8, nlist // PROBE_FRACTION))


class SearchIndexError(VidxError):
    """The vector index cannot be read or written."""


def index_dir_for(catalog: Catalog, out_dir: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> Path:
    """Where the vector index of this SQL index lives: beside the SQLite file, else in the output folder."""
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
    for start in range(0, n, 500_000):
        chunk = np.ascontiguousarray(vectors[start:start + 500_000], dtype=np.float32)
        index.add_with_ids(chunk, np.ascontiguousarray(ids[start:start + 500_000], dtype=np.int64))
    index.nprobe = nprobe_for(nlist)
    return index


class ExactSearcher:
    """Brute-force L2 over all rows: numpy on the host, CuPy when a GPU is usable."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, *, device: str = "auto"):
        from engines.arrays import cupy_module

        cp = cupy_module() if device in ("auto", "gpu") else None
        if device == "gpu" and cp is None:
            raise SearchIndexError("--device gpu asked for, but no GPU is usable (CuPy missing or no CUDA device)")
        self.xp: Any = cp if cp is not None else np
        self.ids = ids
        self.vectors = self.xp.asarray(vectors, dtype=self.xp.float32)
        norms = self.xp.einsum("ij,ij->i", self.vectors, self.vectors)  # no n x 128 temporary
        self.norms = self.xp.where(self.xp.asarray(ids) >= 0, norms, self.xp.inf)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (len(queries), k), nearest first; missing neighbours have id -1."""
        xp = self.xp
        q = xp.asarray(np.atleast_2d(queries), dtype=xp.float32)
        n = len(self.ids)
        k_eff = min(k, n)
        out_d = np.full((len(q), k), np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        if k_eff == 0:
            return out_d, out_i
        d2 = self.norms[None, :] - 2.0 * (q @ self.vectors.T) + (q * q).sum(axis=1)[:, None]
        part = xp.argpartition(d2, k_eff - 1, axis=1)[:, :k_eff] if k_eff < n else xp.tile(xp.arange(n), (len(q), 1))
        top = xp.take_along_axis(d2, part, axis=1)
        order = xp.argsort(top, axis=1)
        part = xp.take_along_axis(part, order, axis=1)
        top = xp.take_along_axis(top, order, axis=1)
        if xp is not np:
            part, top = xp.asnumpy(part), xp.asnumpy(top)
        dist = np.sqrt(np.maximum(top, 0)).astype(np.float32)
        found = self.ids[part]
        found[~np.isfinite(top)] = -1
        out_d[:, :k_eff], out_i[:, :k_eff] = np.where(found >= 0, dist, np.inf), found
        return out_d, out_i


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


@dataclass
class VectorIndex:
    """The persisted vector index of one SQL index (see the module docstring for the files)."""

    root: Path
    meta: dict[str, Any] = field(default_factory=dict)
    _exact: ExactSearcher | None = None
    _ivf: Any = None

    # ------------------------------------------------------------------ files

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "exact"))

    def _path(self, name: str) -> Path:
        return self.root / name

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._path("meta.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self._path(".meta.json.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self._path("meta.json"))
        self.meta = meta

    def stale_reason(self) -> str | None:
        """Why the files cannot be trusted as they are (None when consistent with their meta)."""
        meta = self._read_meta()
        if meta is None:
            return "no index yet"
        if meta.get("version") != FORMAT_VERSION or meta.get("dim") != DIM:
            return "index written by another version"
        if meta.get("dirty"):
            return "a refresh was interrupted"
        rows = int(meta.get("rows", -1))
        try:
            if (self._path("ids.i64").stat().st_size != rows * 8
                    or self._path("videos.i64").stat().st_size != rows * 8
                    or self._path("vectors.f32").stat().st_size != rows * DIM * 4):
                return "row files do not match their meta"
            if not self._path("videos.npz").exists():
                return "videos.npz missing"
            if meta.get("kind") == "ivf" and not self._path("ann.faiss").exists():
                return "ann.faiss missing"
        except OSError:
            return "row files missing"
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

    def _load_rows(self, mapped: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors); mapped: vectors memory-mapped read-only (no copy; the file is append-only and
        compaction replaces it by rename, so a mapping stays valid)."""
        ids = np.fromfile(self._path("ids.i64"), dtype="<i8")
        if mapped and ids.size:
            vectors = np.memmap(self._path("vectors.f32"), dtype="<f4", mode="r").reshape(-1, DIM)
        else:
            vectors = np.fromfile(self._path("vectors.f32"), dtype="<f4").reshape(-1, DIM)
        return ids, vectors[: len(ids)]

    def _load_videos(self) -> dict[int, tuple[int, float]]:
        with np.load(self._path("videos.npz")) as z:
            return {int(v): (int(r), float(t)) for v, r, t in zip(z["video"], z["run"], z["stamp"], strict=True)}

    def _save_videos(self, videos: dict[int, tuple[int, float]]) -> None:
        keys = np.fromiter(videos.keys(), np.int64, len(videos))
        runs = np.fromiter((videos[k][0] for k in keys), np.int64, len(videos))
        stamps = np.fromiter((videos[k][1] for k in keys), np.float64, len(videos))
        tmp = self._path(".videos.tmp.npz")
        np.savez(tmp, video=keys, run=runs, stamp=stamps)
        os.replace(tmp, self._path("videos.npz"))

    def _save_ivf(self, index: Any) -> None:
        import faiss

        tmp = self._path(".ann.faiss.tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, self._path("ann.faiss"))

    # ------------------------------------------------------------------ search

    def open(self, *, device: str = "auto") -> VectorIndex:
        """Load the index for searching (call refresh first; this does not look at SQL)."""
        reason = self.stale_reason()
        if reason is not None:
            raise SearchIndexError(f"search index not usable: {reason}", path=self.root,
                                   hint="run `vidx index` or any search, which refreshes it")
        self.meta = self._read_meta() or {}
        if self.kind == "ivf":
            import faiss

            # Memory-mapped: opening costs nothing at any size, the probed lists are paged in on use, and
            # a refresh replaces the file by rename, so this mapping stays valid.
            self._ivf = faiss.read_index(str(self._path("ann.faiss")), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            self._ivf.nprobe = int(self.meta.get("nprobe", nprobe_for(int(self._ivf.nlist))))
        else:
            ids, vectors = self._load_rows(mapped=True)
            self._exact = ExactSearcher(vectors, ids, device=device)
        return self

    @property
    def live(self) -> int:
        return int(self.meta.get("live", 0))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest tracks of each query: (L2 distances, track ids), nearest first, -1 ids where fewer."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._ivf is not None:
            d2, ids = self._ivf.search(q, k)
            return np.sqrt(np.maximum(d2, 0)).astype(np.float32), ids.astype(np.int64)
        if self._exact is None:
            raise SearchIndexError("search index not opened", path=self.root)
        return self._exact.search(q, k)

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

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(track ids, vectors) of the live rows, for clustering and benchmarks."""
        ids, vectors = self._load_rows()
        keep = ids >= 0
        return ids[keep], vectors[keep]

    # ------------------------------------------------------------------ refresh

    def refresh(self, catalog: Catalog, *, ann_min: int | None = None, force: bool = False) -> Refresh:
        """Bring the index up to date with the SQL index: incremental when possible, else a full rebuild."""
        t0 = time.perf_counter()
        ann_min = ANN_MIN_TRACKS if ann_min is None else ann_min
        with self.lock(exclusive=True):
            current = _sql_videos(catalog)
            reason = "forced" if force else self.stale_reason()
            if reason is None:
                self.meta = self._read_meta() or {}
                result = self._incremental(catalog, current, ann_min)
            else:
                result = self._rebuild(catalog, current, ann_min, reason)
        result.seconds = round(time.perf_counter() - t0, 3)
        if result.added or result.removed or result.rebuilt:
            log.info("search index %s: %s", self.root, result)
        return result

    def _rebuild(self, catalog: Catalog, current: dict[int, tuple[int, float]], ann_min: int, reason: str) -> Refresh:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_meta({"format": FORMAT, "version": FORMAT_VERSION, "dim": DIM, "dirty": True, "rows": 0})
        ids, vids, vectors = _sql_tracks(catalog, None)
        self._replace_rows(ids, vids, vectors)
        self._save_videos(current)
        kind = "ivf" if len(ids) >= ann_min else "exact"
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "dim": DIM, "rows": len(ids), "live": len(ids),
                "kind": kind, "db": _redact(catalog.url), "updated_at": time.time(), "dirty": False}
        if kind == "ivf":
            index = build_ivf(vectors, ids)
            del vectors
            self._save_ivf(index)
            meta.update(trained_on=len(ids), nlist=int(index.nlist), nprobe=int(index.nprobe))
        else:
            self._path("ann.faiss").unlink(missing_ok=True)
        self._write_meta(meta)
        return Refresh(kind, len(ids), added=len(ids), rebuilt=True, reason=reason)

    def _incremental(self, catalog: Catalog, current: dict[int, tuple[int, float]], ann_min: int) -> Refresh:
        seen = self._load_videos()
        changed = [v for v, stamp in current.items() if seen.get(v) != stamp]
        gone = [v for v in seen if v not in current]
        if not changed and not gone:
            return Refresh(self.kind, self.live)
        self._write_meta({**self.meta, "dirty": True})
        ids = np.fromfile(self._path("ids.i64"), dtype="<i8")
        row_videos = np.fromfile(self._path("videos.i64"), dtype="<i8")
        new_ids, new_vids, new_vectors = _sql_tracks(catalog, changed)
        # Rows of every changed or vanished video go, then the changed videos' current tracks come in.
        drop_rows = np.nonzero((ids >= 0) & np.isin(row_videos, np.asarray(changed + gone, np.int64)))[0]
        removed_ids = ids[drop_rows]
        live = self.live - len(drop_rows) + len(new_ids)
        kind_now = "ivf" if live >= ann_min else "exact"
        grew = self.kind == "ivf" and live > RETRAIN_GROWTH * float(self.meta.get("trained_on", live))
        if kind_now != self.kind or grew:
            why = "grew past the IVF training size" if grew else f"size {live} moves search to {kind_now}"
            return self._rebuild(catalog, current, ann_min, why)
        if len(drop_rows):
            mm = np.memmap(self._path("ids.i64"), dtype="<i8", mode="r+")
            mm[drop_rows] = -1
            mm.flush()
            del mm
        with open(self._path("ids.i64"), "ab") as fh:
            fh.write(new_ids.astype("<i8").tobytes())
        with open(self._path("videos.i64"), "ab") as fh:
            fh.write(new_vids.astype("<i8").tobytes())
        with open(self._path("vectors.f32"), "ab") as fh:
            fh.write(new_vectors.astype("<f4").tobytes())
        rows = len(ids) + len(new_ids)
        if self.kind == "ivf":
            import faiss

            index: Any = faiss.read_index(str(self._path("ann.faiss")))
            if len(removed_ids):
                index.remove_ids(np.ascontiguousarray(removed_ids, dtype=np.int64))
            if len(new_ids):
                index.add_with_ids(np.ascontiguousarray(new_vectors, dtype=np.float32), new_ids.astype(np.int64))
            self._save_ivf(index)
        self._save_videos(current)
        meta = {**self.meta, "rows": rows, "live": live, "updated_at": time.time(), "dirty": False}
        self._write_meta(meta)
        if rows and (rows - live) / rows > COMPACT_FRACTION:
            self._compact()
        return Refresh(self.kind, live, added=len(new_ids), removed=len(drop_rows))

    def _replace_rows(self, ids: np.ndarray, videos: np.ndarray, vectors: np.ndarray) -> None:
        """Write new row files under temporary names, then rename: a search that memory-mapped the old
        vectors file keeps reading it (writing in place could truncate the file under its mapping)."""
        for name, data in (("ids.i64", ids.astype("<i8")), ("videos.i64", videos.astype("<i8")),
                           ("vectors.f32", vectors.astype("<f4"))):
            tmp = self._path(f".{name}.tmp")
            data.tofile(tmp)
            os.replace(tmp, self._path(name))

    def _compact(self) -> None:
        """Rewrite the row files without tombstones (the FAISS index holds track ids and is unaffected)."""
        self._write_meta({**self.meta, "dirty": True})
        ids, vectors = self._load_rows()
        keep = ids >= 0
        row_videos = np.fromfile(self._path("videos.i64"), dtype="<i8")[keep]
        ids, vectors = ids[keep], vectors[keep]
        self._replace_rows(ids, row_videos, vectors)
        self._write_meta({**self.meta, "rows": len(ids), "live": len(ids), "dirty": False})


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
                    raise SearchIndexError(f"track {tid} has a {len(emb) // 4}-D embedding, expected {DIM}")
                ids.append(tid)
                vids.append(vid)
                blobs.append(emb)
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, DIM), np.float32)
    vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), DIM)
    return np.asarray(ids, np.int64), np.asarray(vids, np.int64), vectors




def refresh_search_index(catalog: Catalog, out_uri: str | None) -> Refresh:
    """Bring the vector index of this SQL index up to date (incremental); called after every job."""
    return VectorIndex(index_dir_for(catalog, out_uri)).refresh(catalog)


def register_after_jobs() -> None:
    """Have every job driven in this process refresh the vector index when it ends."""
    from jobs.runner import AFTER_JOB

    if refresh_search_index not in AFTER_JOB:
        AFTER_JOB.append(refresh_search_index)
