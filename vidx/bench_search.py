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

Measured: exact top-10 (numpy; CuPy with --device gpu) at --exact-tracks, and FAISS IVF (fp16
codes) top-10 at --ann-tracks for several nprobe values: build time, memory, latency p50/p95 for one
query at a time, recall@10 against exact search over the same vectors, and the cost of an
incremental update (add and remove tracks without rebuilding).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jobs.bench import machine
from vidx.ann import DIM, ExactSearcher, build_ivf, ivf_lists_for

SAME_L2 = 0.4
DIFF_L2 = 0.9


def _spectrum_basis(rng: np.random.Generator, total_var: float, decay: float = 0.8) -> np.ndarray:
    """A 128x128 matrix A so that A @ z (z standard normal) has covariance with a power-law spectrum."""
    spectrum = (np.arange(DIM) + 8.0) ** -decay
    spectrum *= total_var / spectrum.sum()
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return (q * np.sqrt(spectrum)[None, :]).astype(np.float32)


def real_mean_descriptor(cache_dir: Any = None) -> tuple[np.ndarray, str]:
    """The mean of real dlib descriptors of the test photos, or a stand-in of the same norm."""
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
        reason = f"stand-in ({type(exc).__name__})"
    else:
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


def bench_search(*, exact_tracks: int, ann_tracks: int, queries: int, nprobes: list[int], device: str = "cpu",
                 threads: int | None = None, seed: int = 0, say: Callable[[str], None] = print,
                 command: str = "", end_to_end: int = 0, work_dir: Any = None) -> dict[str, Any]:
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
        searcher = ExactSearcher(x, np.arange(exact_tracks, dtype=np.int64), device=device)
        build = time.perf_counter() - t0
        say(f"exact: {exact_tracks:,} tracks, {queries} queries one at a time")
        lat = _latencies(lambda v: searcher.search(v, 10), q)
        batch_t0 = time.perf_counter()
        searcher.search(q, 10)
        batch = time.perf_counter() - batch_t0
        result["exact"] = {"tracks": exact_tracks, "device": "gpu" if searcher.xp is not np else "cpu",
                           "build_s": round(build, 3), "memory_gib": round(x.nbytes / 2**30, 3),
                           "top10": lat, "batch_queries_per_s": round(len(q) / batch, 1), "rss_gib": _rss_gib()}
        say(f"exact: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms")
        del searcher, x
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
    return result


def bench_end_to_end(tracks: int, work_dir: Any, *, videos: int = 10_000, queries: int = 20, seed: int = 0,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """The search path as `vidx search` runs it, over a real SQLite index of `tracks` synthetic tracks.

    Times: filling SQL (not part of search), the first refresh (full build of the vector index), a
    no-op refresh (what every search pays to check staleness), opening the index (reading the row
    files), and a whole appearance search (index + SQL rows + merging) per query, cold and warm.
    """
    from pathlib import Path

    from sqlalchemy import insert

    from jobs.catalog import Catalog
    from schemas.sql import Run, Track, Video, utcnow
    from vidx.ann import VectorIndex
    from vidx.search import search_index

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
    index = VectorIndex(work / "search-index")
    t0 = time.perf_counter()
    first = index.refresh(catalog)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.refresh(catalog)
    noop = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.open(device="cpu")
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
