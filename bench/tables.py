"""What `vidx bench ...` prints for each benchmark's result: header lines and rich tables, in order."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table


def engines_report(res: dict[str, Any]) -> list[RenderableType]:
    """bench_engines: items per second for each model, runtime and batch size."""
    header = (f"{res['machine']['cpu']} ({res['machine']['cores']} logical cores) · "
              f"{res['machine'].get('gpu') or 'no GPU'}")
    table = Table("model", "runtime", "batch", "items/s", "ms/batch (median)")
    for r in res["rows"]:
        table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['items_per_s']:,.0f}",
                      f"{r['ms_per_batch']:.2f}")
    return [header, table]


def pipeline_report(res: dict[str, Any]) -> list[RenderableType]:
    """bench_pipeline: the CPU pipeline at each number of videos in flight, against `ffmpeg -f null`."""
    header = (f"{res['machine']['cpu']} ({res['machine']['cores']} logical cores) · "
              f"{res['video_seconds']:.0f} s of 1080p30 {res['codec']}")
    ff = res["rows"].get("ffmpeg_null")
    baseline = f"ffmpeg -f null: {ff['wall_s']:.1f} s" if ff else "ffmpeg not found: no decode baseline"
    table = Table("videos in flight", "wall s", "x real time", "x ffmpeg time", "video fps", "decoded fps",
                  "analysed")
    for key, r in res["rows"].items():
        if key.startswith("pipeline"):
            table.add_row(str(r["in_flight"]), f"{r['wall_s']:.1f}", f"{r['x_realtime']:.1f}",
                          str(r.get("x_ffmpeg_time", "-")), f"{r['video_fps']:.0f}", f"{r['decoded_fps']:.0f}",
                          str(r["frames_analysed"]))
    return [header, baseline, table]


def gpu_report(res: dict[str, Any]) -> list[RenderableType]:
    """bench_gpu: per codec, NVDEC decode-only against the GPU pipeline's three sampling modes and the CPU."""
    parts: list[RenderableType] = [f"{res['machine'].get('gpu')} · {res.get('nvidia_smi', '')}"]
    for codec, r in res["codecs"].items():
        table = Table(f"{codec} ({r['videos']} videos)", "video fps", "decoded fps", "video s / s", "x decode-only")
        for d in r["decode_only"]:
            table.add_row(f"decode only, {d['decoders']} decoders", f"{d['fps']:.0f}", f"{d['fps']:.0f}", "-", "-")
        for mode in ("fps", "every-frame", "keyframes"):
            p = r[f"pipeline_{mode}"]
            table.add_row(f"pipeline {mode}", f"{p['video_fps']:.0f}", f"{p['decoded_fps']:.0f}",
                          f"{p['video_s_per_s']:.1f}", f"{p['x_decode_only']:.2f}")
        c = r["pipeline_cpu"]
        table.add_row("CPU pipeline", f"{c['video_fps']:.0f}", f"{c['decoded_fps']:.0f}",
                      f"{c['video_s_per_s']:.1f}", "-")
        parts.append(table)
    parts.append(f"GPU memory pool peak {res['gpu_memory_pool_peak_gib']} GiB · RSS {res['rss_mib']}")
    return parts


def search_report(res: dict[str, Any]) -> list[RenderableType]:
    """bench_search: latency, recall and build time of exact search, IVF and pgvector HNSW."""
    parts: list[RenderableType] = [f"{res['machine']['cpu']} · {res['machine']['cores']} cores · "
                                   f"{res['threads']} threads"]
    if "end_to_end" in res:
        parts.append(f"end to end: {res['end_to_end']}")
    table = Table("search", "tracks", "nprobe", "p50 ms", "p95 ms", "recall@10", "known", "L2<0.6", "build s")
    if "exact" in res:
        e = res["exact"]
        table.add_row(f"exact ({e['index']})", f"{e['tracks']:,}", "", f"{e['top10']['p50_ms']:.2f}",
                      f"{e['top10']['p95_ms']:.2f}", "1", "1", "1", f"{e['build_s']:.1f}")
    if "ann" in res:
        a = res["ann"]
        for r in a["nprobe"]:
            table.add_row(a["index"], f"{a['tracks']:,}", str(r["nprobe"]), f"{r['top10']['p50_ms']:.2f}",
                          f"{r['top10']['p95_ms']:.2f}", f"{r['recall_at_10']:.3f}",
                          f"{r['recall_known_people']:.3f}", f"{r['recall_same_person_l2_0_6']:.3f}",
                          f"{a['build_s']:.0f}")
    if "pgvector" in res:
        p = res["pgvector"]
        for r in p["ef_search"]:
            table.add_row("pgvector hnsw", f"{p['tracks']:,}", f"ef {r['ef_search']}",
                          f"{r['top10']['p50_ms']:.2f}", f"{r['top10']['p95_ms']:.2f}", f"{r['recall_at_10']:.3f}",
                          f"{r['recall_known_people']:.3f}", f"{r['recall_same_person_l2_0_6']:.3f}",
                          f"{p['build_s']:.0f}")
    parts.append(table)
    return parts


def jobs_report(r: dict[str, Any]) -> list[RenderableType]:
    """bench_jobs: a job on Ray against the in-process pipeline, same clips."""
    return [f"{r['machine']['cpu']} · {r['machine']['cores']} cores · {r['videos']} clips",
            f"in-process: {r['local']['wall_s']:.2f} s · Ray: {r['ray']['wall_s']:.2f} s "
            f"(Ray start-up, not counted: {r['ray_start_s']:.2f} s) · ratio {r['ray_over_local']:.2f} "
            f"(target ≤ {r['target']})"]
