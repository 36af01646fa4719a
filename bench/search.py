"""`vidx bench search`: exact and ANN search over millions of synthetic face-track descriptors.

Synthetic descriptors imitate dlib's 128-D face descriptors as this project measures them on real
photos (docs/search.md): a common mean vector (taken from real descriptors of the test photos when
the models are cached, else a fixed random vector of the same norm, ~1.4), identity centres spread
around it, and tracks spread around their identity's centre. Both spreads are anisotropic (power-law
spectra in random orthonormal bases) and scaled so that two tracks of one identity are ~0.4 apart in
L2 and two identities ~0.9 apart, as dlib descriptors are (same person < 0.6). Identities have a
heavy-tailed number of tracks (log-normal, median 8): a few people appear very often, most rarely.
Queries are fresh samples of identities that are in the index (a new photo of someone filmed),
plus 10% of identities that are not.

Measured: exact top-10 (FAISS flat) at --exact-tracks, FAISS IVF (fp16 codes) top-10 at --ann-tracks
for several nprobe values, and with --pgvector-url pgvector's HNSW index in PostgreSQL over the same
--ann-tracks vectors for several ef_search values: build time, memory, latency p50/p95 for one query at
a time, recall@10 against exact search over the same vectors, and the cost of an incremental update of
the IVF index (add and remove tracks without rebuilding).
"""

from __future__ import annotations

import functools
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.jobs import machine
from search.vector_index import DIM, build_flat, build_ivf, faiss_search, ivf_lists_for

SAME_L2 = 0.4
DIFF_L2 = 0.9


def _spectrum_basis(rng: np.random.Generator, total_var: float, decay: float = 0.8) -> np.ndarray:
    """A 128x128 matrix A so that A @ z (z standard normal) has covariance with a power-law spectrum."""
    spectrum = (np.arange(DIM) + 8.0) ** -decay
    spectrum *= total_var / spectrum.sum()
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return (q * np.sqrt(spectrum)[None, :]).astype(np.float32)


def real_mean_descriptor(cache_dir: Any = None, *, strict: bool = False) -> tuple[np.ndarray, str]:
    """The mean of real dlib descriptors of the test photos, or (unless `strict`, as the tests ask) a stand-in
    of the same norm, with the reason it stands in."""
    try:
        from engines.loader import load_engines
        from engines.photos import load_photo
        from engines.verify import largest_face_embedding
        from schemas.config import DetectionConfig, RuntimeConfig

        engines = load_engines(DetectionConfig(detect_persons=False), RuntimeConfig(device="cpu"), warm_up=False)
        embs = []
        for name in ("obama", "biden", "astronaut", "t1"):
            _, emb = largest_face_embedding(engines, load_photo(name, cache_dir))
            if emb is not None:
                embs.append(emb)
        if embs:
            return np.mean(embs, axis=0).astype(np.float32), f"mean of {len(embs)} real descriptors"
    except Exception as exc:  # models not cached: the stand-in keeps the benchmark runnable
        if strict:
            raise
        reason = f"stand-in ({type(exc).__name__}: {exc})"
    else:
        if strict:
            raise RuntimeError("no face found in the test photos")
        reason = "stand-in (no face found)"
    rng = np.random.default_rng(7)
    v = rng.standard_normal(DIM).astype(np.float32)
    return v * (1.3 / np.linalg.norm(v)), reason


class SyntheticFaces:
    """Identities and their tracks' descriptors, generated chunk by chunk from one seed."""

    def __init__(self, n: int, mean: np.ndarray, seed: int = 0, same_l2: float = SAME_L2, diff_l2: float = DIFF_L2):
        rng = np.random.default_rng(seed)
        within_var = same_l2 ** 2 / 2
        between_var = max(diff_l2 ** 2 / 2 - within_var, 1e-3)
        self.a_between = _spectrum_basis(rng, between_var)
        self.a_within = _spectrum_basis(rng, within_var, decay=0.5)
        counts: list[np.ndarray] = []
        total = 0
        while total < n:
            c = 1 + np.floor(rng.lognormal(np.log(8), 1.0, size=max(1024, (n - total) // 8))).astype(np.int64)
            counts.append(c)
            total += int(c.sum())
        per_id = np.concatenate(counts)
        per_id = per_id[: int(np.searchsorted(np.cumsum(per_id), n)) + 1]
        self.identities = len(per_id)
        self.centres = (mean[None, :] + rng.standard_normal((self.identities, DIM), dtype=np.float32)
                        @ self.a_between.T).astype(np.float32)
        self.identity = rng.permutation(np.repeat(np.arange(self.identities, dtype=np.int32), per_id)[:n])
        self.seed = seed
        self.n = n

    def chunk(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        noise = rng.standard_normal((stop - start, DIM), dtype=np.float32) @ self.a_within.T
        return self.centres[self.identity[start:stop]] + noise

    def all(self, dtype: Any = np.float32, chunk: int = 1_000_000) -> np.ndarray:
        out = np.empty((self.n, DIM), dtype)
        for s in range(0, self.n, chunk):
            out[s:s + chunk] = self.chunk(s, min(s + chunk, self.n))
        return out

    def queries(self, k: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """New photos: 90% of identities in the index (chosen like tracks), 10% of strangers (the mask)."""
        rng = np.random.default_rng(seed)
        known = self.identity[rng.integers(0, self.n, size=k)]
        centres = self.centres[known].copy()
        strangers = rng.random(k) < 0.1
        centres[strangers] = (self.centres.mean(axis=0) + rng.standard_normal((int(strangers.sum()), DIM),
                                                                               dtype=np.float32) @ self.a_between.T)
        q = (centres + rng.standard_normal((k, DIM), dtype=np.float32) @ self.a_within.T).astype(np.float32)
        return q, strangers

    def check(self, vectors: np.ndarray, pairs: int = 20_000, seed: int = 2) -> dict[str, float]:
        """Measured L2 distances of same-identity and different-identity pairs (percentiles 5/50/95)."""
        rng = np.random.default_rng(seed)
        i = rng.integers(0, len(vectors), size=pairs)
        j = rng.integers(0, len(vectors), size=pairs)
        d = np.linalg.norm(vectors[i].astype(np.float32) - vectors[j].astype(np.float32), axis=1)
        same = self.identity[i] == self.identity[j]
        order = np.argsort(self.identity[: min(len(vectors), 200_000)], kind="stable")
        ids_sorted = self.identity[order]
        first = order[:-1][ids_sorted[:-1] == ids_sorted[1:]][:pairs]
        second = order[1:][ids_sorted[:-1] == ids_sorted[1:]][:pairs]
        d_same = np.linalg.norm(vectors[first].astype(np.float32) - vectors[second].astype(np.float32), axis=1)
        diff = d[~same]
        return {"same_p5": float(np.percentile(d_same, 5)), "same_p50": float(np.median(d_same)),
                "same_p95": float(np.percentile(d_same, 95)), "diff_p5": float(np.percentile(diff, 5)),
                "diff_p50": float(np.median(diff)), "diff_p95": float(np.percentile(diff, 95)),
                "norm_p50": float(np.median(np.linalg.norm(vectors[i[:2000]].astype(np.float32), axis=1)))}


def _latencies(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> dict[str, float]:
    fn(queries[:1])  # warm-up
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None, :])
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "max_ms": round(float(ms.max()), 3), "queries": len(ms)}


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int,
                chunk: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: exact top-k (L2 distances, row numbers) over (possibly float16) vectors, in chunks."""
    best_d = np.full((len(queries), k), np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    qn = (queries * queries).sum(axis=1)[:, None]
    for s in range(0, len(vectors), chunk):
        x = np.asarray(vectors[s:s + chunk], np.float32)
        d2 = (x * x).sum(axis=1)[None, :] - 2 * queries @ x.T + qn
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        cd = np.concatenate([best_d, np.take_along_axis(d2, part, axis=1)], axis=1)
        ci = np.concatenate([best_i, part + s], axis=1)
        o = np.argsort(cd, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(cd, o, axis=1), np.take_along_axis(ci, o, axis=1)
    return np.sqrt(np.maximum(best_d, 0)), best_i


def _recall(found: np.ndarray, truth: np.ndarray, truth_d: np.ndarray, strangers: np.ndarray) -> dict[str, float]:
    """recall@10 over all queries, over queries of people in the index, over strangers, and of the true
    neighbours that are the same person as far as search can tell (L2 < 0.6: what `vidx search` returns)."""
    per_query = np.asarray([len(set(found[i]) & set(truth[i])) / truth.shape[1] for i in range(len(truth))])
    close = truth_d < 0.6
    hit_close = sum(len(set(found[i]) & set(truth[i][close[i]])) for i in range(len(truth)))
    return {"recall_at_10": round(float(per_query.mean()), 4),
            "recall_known_people": round(float(per_query[~strangers].mean()), 4),
            "recall_strangers": round(float(per_query[strangers].mean()), 4) if strangers.any() else 1.0,
            "recall_same_person_l2_0_6": round(hit_close / max(int(close.sum()), 1), 4)}


def bench_search(*, exact_tracks: int, ann_tracks: int, queries: int, nprobes: list[int],
                 threads: int | None = None, seed: int = 0, say: Callable[[str], None] = print,
                 command: str = "", end_to_end: int = 0, work_dir: Any = None, pgvector_url: str | None = None,
                 ef_searches: tuple[int, ...] = (40, 100, 200)) -> dict[str, Any]:
    import faiss

    threads = threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    mean, mean_source = real_mean_descriptor()
    result: dict[str, Any] = {"machine": machine(), "command": command, "threads": threads,
                              "synthetic": {"mean": mean_source, "target_same_l2": SAME_L2,
                                            "target_diff_l2": DIFF_L2}}
    if exact_tracks:
        say(f"exact: generating {exact_tracks:,} descriptors")
        faces = SyntheticFaces(exact_tracks, mean, seed)
        x = faces.all()
        result["synthetic"].update(identities_exact=faces.identities, measured=faces.check(x))
        q, _ = faces.queries(queries)
        t0 = time.perf_counter()
        flat = build_flat(x, np.arange(exact_tracks, dtype=np.int64))
        build = time.perf_counter() - t0
        say(f"exact: {exact_tracks:,} tracks, {queries} queries one at a time")
        lat = _latencies(lambda v: faiss_search(flat, v, 10), q)
        batch_t0 = time.perf_counter()
        faiss_search(flat, q, 10)
        batch = time.perf_counter() - batch_t0
        result["exact"] = {"tracks": exact_tracks, "index": "IDMap2,Flat", "build_s": round(build, 3),
                           "memory_gib": round(x.nbytes / 2**30, 3), "top10": lat,
                           "batch_queries_per_s": round(len(q) / batch, 1), "rss_gib": _rss_gib()}
        say(f"exact: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms")
        del flat, x
    if end_to_end:
        result["end_to_end"] = bench_end_to_end(end_to_end, work_dir or "vidx-bench/search", say=say)
    if ann_tracks:
        say(f"ann: generating {ann_tracks:,} descriptors (float16 copy for the ground truth)")
        t0 = time.perf_counter()
        faces = SyntheticFaces(ann_tracks, mean, seed + 1)
        x16 = faces.all(np.float16)
        gen_s = time.perf_counter() - t0
        result["synthetic"].update(identities_ann=faces.identities, measured_ann=faces.check(x16))
        q, strangers = faces.queries(queries, seed=seed + 5)
        say(f"ann: exact ground truth for {queries} queries")
        truth_d, truth = _exact_topk(x16, q, 10)
        ids = np.arange(ann_tracks, dtype=np.int64)
        nlist = ivf_lists_for(ann_tracks)
        say(f"ann: building IVF{nlist},SQfp16 over {ann_tracks:,} tracks with {threads} threads")
        t0 = time.perf_counter()
        index = build_ivf(x16, ids, nlist=nlist)
        build_s = time.perf_counter() - t0
        code_bytes = index.ntotal * (index.code_size + 8)
        rows = []
        for nprobe in nprobes:
            index.nprobe = nprobe

            def run(v: np.ndarray) -> Any:
                return index.search(v, 10)

            lat = _latencies(run, q)
            _, found = index.search(q, 10)
            rec = _recall(found, truth, truth_d, strangers)
            rows.append({"nprobe": nprobe, "top10": lat, **rec})
            say(f"ann: nprobe {nprobe}: p95 {lat['p95_ms']} ms, {rec}")
        upd = {}
        new = faces.chunk(0, 10_000) + np.float32(0.01)
        t0 = time.perf_counter()
        index.add_with_ids(new, np.arange(ann_tracks, ann_tracks + 10_000, dtype=np.int64))
        upd["add_10k_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        index.remove_ids(np.arange(ann_tracks, ann_tracks + 10_000, dtype=np.int64))
        upd["remove_10k_s"] = round(time.perf_counter() - t0, 3)
        result["ann"] = {"tracks": ann_tracks, "index": f"IVF{nlist},SQfp16", "nlist": nlist,
                         "generate_s": round(gen_s, 1), "build_s": round(build_s, 1),
                         "index_memory_gib": round(code_bytes / 2**30, 3), "rss_gib": _rss_gib(),
                         "nprobe": rows, "incremental": upd}
        del index
        if pgvector_url:
            result["pgvector"] = bench_pgvector(pgvector_url, x16, q, truth, truth_d, strangers, ef_searches,
                                                threads=threads, say=say)
    return result


def bench_pgvector(server_url: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                   truth_d: np.ndarray, strangers: np.ndarray, ef_searches: tuple[int, ...], *, threads: int,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """pgvector's HNSW index in the scratch database vidx_bench_search of `server_url` (created, then dropped),
    searched as vidx searches it (PgVectorSearch: one statement per query over the pool), over the given vectors."""
    from sqlalchemy import create_engine, insert, text
    from sqlalchemy.engine import make_url

    from catalog.db import Catalog
    from schemas.sql import Run, Video, utcnow
    from search.vector_index import PgVectorSearch

    server = make_url(server_url)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS vidx_bench_search WITH (FORCE)")
        conn.exec_driver_sql("CREATE DATABASE vidx_bench_search")
    catalog = None
    try:
        catalog = Catalog(server.set(database="vidx_bench_search").render_as_string(hide_password=False))
        if not catalog.vectors_in_db:
            raise RuntimeError(f"the PostgreSQL server at {catalog.where} has no pgvector extension")
        n, videos = len(vectors), 10_000
        say(f"pgvector: copying {n:,} tracks into {catalog.where}")
        t0 = time.perf_counter()
        with catalog.session() as s:
            run = Run(key="bench", pipeline_version="bench", models={}, params={})
            s.add(run)
            s.flush()
            now = utcnow()
            s.execute(insert(Video), [{"id": v + 1, "path": f"/archive/video-{v:06d}.mp4", "size": 1, "mtime": 0.0,
                                       "fingerprint": "x", "status": "indexed", "run_id": run.id, "indexed_at": now}
                                      for v in range(videos)])
            run_id = run.id
        ids = np.arange(1, n + 1, dtype=np.int64)
        with catalog.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_track_vectors_hnsw")  # bulk load, then one build: what is timed below
            raw = conn.connection.dbapi_connection
            if raw is None:
                raise RuntimeError("the SQLAlchemy connection has no DBAPI connection")
            for start in range(0, n, 100_000):
                x = np.asarray(vectors[start:start + 100_000], np.float32)
                m = len(x)
                _copy_binary(raw, "tracks (id, video_id, run_id, track_index, start_s, end_s, n_faces, embedding, "
                                  "quality, best_pts_s)",
                             [(">i4", ids[start:start + m]), (">i4", ids[start:start + m] % videos + 1),
                              (">i4", np.full(m, run_id)), (">i4", ids[start:start + m]), (">f8", np.zeros(m)),
                              (">f8", np.full(m, 5.0)), (">i4", np.full(m, 10)), ("V512", x.astype("<f4")),
                              (">f8", np.ones(m)), (">f8", np.zeros(m))])
                # pgvector's binary form: int16 dimensions, int16 unused, float32 big-endian values
                head = np.zeros(m, [("dim", ">i2"), ("unused", ">i2")])
                head["dim"] = DIM
                _copy_binary(raw, "track_vectors (track_id, embedding)",
                             [(">i4", ids[start:start + m]), ("V516", (head, x.astype(">f4")))])
            conn.execute(text("SELECT setval('tracks_id_seq', :n)"), {"n": n})
            conn.exec_driver_sql("ANALYZE track_vectors")
        fill_s = time.perf_counter() - t0
        say(f"pgvector: building the HNSW index (m 16, ef_construction 64) with {threads} processes")
        t0 = time.perf_counter()
        with catalog.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '4GB'")  # the whole graph in memory
            conn.execute(text("SELECT set_config('max_parallel_maintenance_workers', :v, true)"),
                         {"v": str(max(threads - 1, 0))})
            conn.exec_driver_sql("CREATE INDEX ix_track_vectors_hnsw ON track_vectors "
                                 "USING hnsw (embedding vector_l2_ops)")
        build_s = time.perf_counter() - t0
        with catalog.engine.connect() as conn:
            size = int(conn.exec_driver_sql("SELECT pg_relation_size('ix_track_vectors_hnsw')").scalar() or 0)
        rows = []
        for ef in ef_searches:
            search = PgVectorSearch(catalog, ef_search=ef)
            lat = _latencies(functools.partial(search.search, k=10), queries)
            found = np.concatenate([search.search(v[None, :], 10)[1] for v in queries]) - 1  # rows, not ids
            rec = _recall(found, truth, truth_d, strangers)
            rows.append({"ef_search": ef, "top10": lat, **rec})
            say(f"pgvector: ef_search {ef}: p95 {lat['p95_ms']} ms, {rec}")
        return {"tracks": n, "index": "hnsw (m 16, ef_construction 64), vector_l2_ops", "fill_s": round(fill_s, 1),
                "build_s": round(build_s, 1), "index_gib": round(size / 2**30, 3), "ef_search": rows}
    finally:
        if catalog is not None:
            catalog.close()
        with admin.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS vidx_bench_search WITH (FORCE)")
        admin.dispose()


def _copy_binary(conn: Any, target: str, columns: list[tuple[str, Any]]) -> None:
    """COPY rows in PostgreSQL's binary format, built with numpy (per row: field count, then length + value of
    each field): 100k rows in milliseconds where formatting them as text would take seconds."""
    m = len(columns[0][1]) if not isinstance(columns[0][1], tuple) else len(columns[0][1][0])
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, (dtype, _) in enumerate(columns):
        fields += [(f"len{i}", ">i4"), (f"v{i}", dtype)]
    rows = np.zeros(m, fields)
    rows["count"] = len(columns)
    for i, (dtype, values) in enumerate(columns):
        rows[f"len{i}"] = np.dtype(dtype).itemsize
        if isinstance(values, tuple):  # several arrays side by side in one field
            rows[f"v{i}"] = np.concatenate([np.ascontiguousarray(v).view(np.uint8).reshape(m, -1) for v in values],
                                           axis=1).view(dtype).reshape(m)
        elif dtype.startswith("V"):
            rows[f"v{i}"] = np.ascontiguousarray(values).view(np.uint8).reshape(m, -1).view(dtype).reshape(m)
        else:
            rows[f"v{i}"] = values
    payload = b"PGCOPY\n\xff\r\n\x00" + bytes(8) + rows.tobytes() + b"\xff\xff"
    with conn.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.write(payload)


def bench_end_to_end(tracks: int, work_dir: Any, *, videos: int = 10_000, queries: int = 20, seed: int = 0,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """The search path as `vidx search` runs it, over a real SQLite index of `tracks` synthetic tracks.

    Times: filling SQL (not part of search), the first refresh (full build of the vector index), a
    no-op refresh (what every search pays to check staleness), opening the index (reading the row
    index), and a whole appearance search (index + SQL rows + merging) per query, cold and warm.
    """
    from pathlib import Path

    from sqlalchemy import insert

    from catalog.db import Catalog
    from schemas.sql import Run, Track, Video, utcnow
    from search.query import search_index
    from search.vector_index import FaissFileIndex

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "index.sqlite"
    for f in work.glob("index.sqlite*"):
        f.unlink()
    import shutil

    shutil.rmtree(work / "search-index", ignore_errors=True)
    catalog = Catalog(f"sqlite:///{db}")
    mean, _ = real_mean_descriptor()
    faces = SyntheticFaces(tracks, mean, seed)
    say(f"end to end: writing {tracks:,} tracks over {videos:,} videos to SQLite")
    t0 = time.perf_counter()
    with catalog.session() as s:
        run = Run(key="bench", pipeline_version="bench", models={}, params={"sampling": {"mode": "fps", "fps": 2.0}})
        s.add(run)
        s.flush()
        now = utcnow()
        s.execute(insert(Video), [{"id": v + 1, "path": f"/archive/video-{v:06d}.mp4", "size": 1, "mtime": 0.0,
                                   "fingerprint": "x", "duration_s": 600.0, "status": "indexed", "run_id": run.id,
                                   "indexed_at": now} for v in range(videos)])
        run_id = run.id
    rng = np.random.default_rng(seed)
    for start in range(0, tracks, 100_000):
        x = faces.chunk(start, min(start + 100_000, tracks))
        vid = rng.integers(1, videos + 1, size=len(x))
        t_start = rng.uniform(0, 590, size=len(x))
        with catalog.session() as s:
            s.execute(insert(Track), [
                {"video_id": int(vid[i]), "run_id": run_id, "track_index": start + i, "start_s": float(t_start[i]),
                 "end_s": float(t_start[i] + 5), "n_faces": 10, "embedding": x[i].astype("<f4").tobytes(),
                 "quality": 1.0, "best_pts_s": float(t_start[i])} for i in range(len(x))])
    fill = time.perf_counter() - t0
    index = FaissFileIndex(work / "search-index", catalog)
    t0 = time.perf_counter()
    first = index.refresh()
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.refresh()
    noop = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.open()
    open_s = time.perf_counter() - t0
    q, _ = faces.queries(queries, seed=seed + 11)
    t0 = time.perf_counter()
    search_index(catalog, index, q[0])
    first_search = time.perf_counter() - t0
    per = []
    n_hits = []
    for v in q[1:]:
        t0 = time.perf_counter()
        n_hits.append(len(search_index(catalog, index, v)))
        per.append(time.perf_counter() - t0)
    ms = np.asarray(per) * 1000
    result = {"tracks": tracks, "videos": videos, "kind": first.kind, "sql_fill_s": round(fill, 1),
              "first_refresh_s": round(build, 2), "noop_refresh_s": round(noop, 3), "open_s": round(open_s, 3),
              "first_search_s": round(first_search, 3), "search_p50_ms": round(float(np.median(ms)), 1),
              "search_p95_ms": round(float(np.percentile(ms, 95)), 1), "hits_median": float(np.median(n_hits)),
              "cold_total_s": round(noop + open_s + first_search, 3)}
    say(f"end to end: {result}")
    return result
