"""`vidx bench`: benchmarks whose results go to docs/performance.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from vidx.commands.common import Context, device_option, engine_option, json_option, pass_ctx
from vidx.output import emit, out


@click.group()
def bench() -> None:
    """Benchmarks (results go to docs/performance.md with the machine and command)."""


@bench.command("engines")
@device_option
@engine_option
@click.option("--batch", "batches", default="1,8,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", default=2.0, show_default=True, help="Time spent per model and batch size.")
@json_option
@pass_ctx
def bench_engines(ctx: Context, device: str, engine: str, batches: str, seconds: float, as_json: bool) -> None:
    """Images (or faces) per second for each model, runtime and batch size."""
    from bench.engines import bench_engines as run_bench

    sizes = [int(b) for b in batches.split(",") if b.strip()]
    result = run_bench(ctx.store(), device=device, engine=engine, batches=sizes, seconds=seconds,
                       command=" ".join(["vidx", *sys.argv[1:]]))

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} ({res['machine']['cores']} logical cores) · "
                  f"{res['machine'].get('gpu') or 'no GPU'}")
        table = Table("model", "runtime", "batch", "items/s", "ms/batch (median)")
        for r in res["rows"]:
            table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['items_per_s']:,.0f}",
                          f"{r['ms_per_batch']:.2f}")
        out.print(table)

    emit(result, as_json, render)




bench_dir_option = click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                                default=Path("vidx-bench"), show_default=True,
                                help="Where the 1080p benchmark clips are built (once) and kept.")
save_option = click.option("--save", type=click.Path(dir_okay=False, path_type=Path), default=None,
                           help="Also write the JSON result to this file.")


def _save(result: dict[str, Any], save: Path | None) -> None:
    if save is not None:
        import json

        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps(result, indent=1, default=str))


@bench.command("pipeline")
@bench_dir_option
@click.option("--codec", type=click.Choice(["h264", "hevc"]), default="h264", show_default=True)
@save_option
@json_option
@pass_ctx
def bench_pipeline(ctx: Context, work_dir: Path, codec: str, save: Path | None, as_json: bool) -> None:
    """The CPU pipeline on 1080p30 clips at the default sampling, against `ffmpeg -f null` on the same files."""
    from bench.video import bench_pipeline as run_bench
    from vidx.output import say

    result = run_bench(ctx.cache_dir, work_dir, codec=codec, command=" ".join(["vidx", *sys.argv[1:]]), say=say)
    _save(result, save)

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} ({res['machine']['cores']} logical cores) · "
                  f"{res['video_seconds']:.0f} s of 1080p30 {res['codec']}")
        ff = res["rows"].get("ffmpeg_null")
        out.print(f"ffmpeg -f null: {ff['wall_s']:.1f} s" if ff else "ffmpeg not found: no decode baseline")
        table = Table("videos in flight", "wall s", "x real time", "x ffmpeg time", "video fps", "decoded fps",
                      "analysed")
        for key, r in res["rows"].items():
            if key.startswith("pipeline"):
                table.add_row(str(r["in_flight"]), f"{r['wall_s']:.1f}", f"{r['x_realtime']:.1f}",
                              str(r.get("x_ffmpeg_time", "-")), f"{r['video_fps']:.0f}", f"{r['decoded_fps']:.0f}",
                              str(r["frames_analysed"]))
        out.print(table)

    emit(result, as_json, render)


@bench.command("gpu")
@bench_dir_option
@click.option("--decoders", default="7,14,21", show_default=True, help="Decoder counts tried for decode-only.")
@click.option("--copies", default=28, show_default=True, help="Videos per codec (the clips, repeated).")
@click.option("--cpu-videos", default=2, show_default=True, help="Videos for the CPU pipeline's row.")
@click.option("--codecs", default="h264,hevc", show_default=True, help="Codecs to measure.")
@save_option
@json_option
@pass_ctx
def bench_gpu(ctx: Context, work_dir: Path, decoders: str, copies: int, cpu_videos: int, codecs: str,
              save: Path | None, as_json: bool) -> None:
    """NVDEC decode-only vs the full GPU pipeline (default sampling, every frame, key frames) vs the CPU."""
    from bench.video import bench_gpu as run_bench
    from vidx.output import say

    result = run_bench(ctx.cache_dir, work_dir, decoders=[int(d) for d in decoders.split(",")], copies=copies,
                       cpu_videos=cpu_videos, command=" ".join(["vidx", *sys.argv[1:]]), say=say,
                       codecs=tuple(codecs.split(",")))
    _save(result, save)

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine'].get('gpu')} · {res.get('nvidia_smi', '')}")
        for codec, r in res["codecs"].items():
            table = Table(f"{codec} ({r['videos']} videos)", "video fps", "decoded fps", "video s / s",
                          "x decode-only")
            for d in r["decode_only"]:
                table.add_row(f"decode only, {d['decoders']} decoders", f"{d['fps']:.0f}", f"{d['fps']:.0f}", "-", "-")
            for mode in ("fps", "every-frame", "keyframes"):
                p = r[f"pipeline_{mode}"]
                table.add_row(f"pipeline {mode}", f"{p['video_fps']:.0f}", f"{p['decoded_fps']:.0f}",
                              f"{p['video_s_per_s']:.1f}", f"{p['x_decode_only']:.2f}")
            c = r["pipeline_cpu"]
            table.add_row("CPU pipeline", f"{c['video_fps']:.0f}", f"{c['decoded_fps']:.0f}",
                          f"{c['video_s_per_s']:.1f}", "-")
            out.print(table)
        out.print(f"GPU memory pool peak {res['gpu_memory_pool_peak_gib']} GiB · RSS {res['rss_mib']}")

    emit(result, as_json, render)


@bench.command("search")
@click.option("--exact-tracks", type=click.IntRange(0), default=1_000_000, show_default=True,
              help="Tracks for the exact-search measurement (0 skips it).")
@click.option("--ann-tracks", type=click.IntRange(0), default=10_000_000, show_default=True,
              help="Tracks for the ANN measurement (0 skips it).")
@click.option("--queries", type=click.IntRange(10), default=300, show_default=True, help="Queries, one at a time.")
@click.option("--nprobe", "nprobes", default="16,32,64,128,256", show_default=True,
              help="IVF lists probed, comma-separated.")
@click.option("--threads", type=click.IntRange(1), default=None, help="FAISS threads [default: all cores].")
@click.option("--pgvector-url", default=None, metavar="URL",
              help="A PostgreSQL server with pgvector: also measure its HNSW index over the --ann-tracks vectors "
                   "(in a scratch database, dropped afterwards).")
@click.option("--ef-search", "ef_searches", default="40,100,200", show_default=True,
              help="pgvector HNSW ef_search values, comma-separated.")
@click.option("--end-to-end", type=click.IntRange(0), default=0, show_default=True,
              help="Also time `vidx search`'s whole path over a SQLite index of this many tracks (0 skips).")
@click.option("--work-dir", "search_work_dir", type=click.Path(file_okay=False), default="vidx-bench/search",
              show_default=True, help="Where the end-to-end SQLite index is written.")
@json_option
def bench_search_cmd(exact_tracks: int, ann_tracks: int, queries: int, nprobes: str, threads: int | None,
                     pgvector_url: str | None, ef_searches: str, end_to_end: int, search_work_dir: str,
                     as_json: bool) -> None:
    """Exact, IVF and pgvector HNSW top-10 over synthetic dlib-like face descriptors: latency, recall, build time."""
    from bench.search import bench_search
    from vidx.output import say

    result = bench_search(exact_tracks=exact_tracks, ann_tracks=ann_tracks, queries=queries,
                          nprobes=[int(p) for p in nprobes.split(",") if p.strip()], threads=threads,
                          say=say, command=" ".join(["vidx", *sys.argv[1:]]), end_to_end=end_to_end,
                          work_dir=search_work_dir, pgvector_url=pgvector_url,
                          ef_searches=tuple(int(e) for e in ef_searches.split(",") if e.strip()))

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} · {res['machine']['cores']} cores · {res['threads']} threads")
        if "end_to_end" in res:
            out.print(f"end to end: {res['end_to_end']}")
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
        out.print(table)

    emit(result, as_json, render)

@bench.command("jobs")
@click.option("--videos", type=click.IntRange(1, 1000), default=20, show_default=True, help="Short clips to index.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Ray CPU workers [default: CPUs/4, at least 1].")
@json_option
@pass_ctx
def bench_jobs(ctx: Context, videos: int, workers: int | None, as_json: bool) -> None:
    """A job on a local Ray instance against the in-process pipeline, same clips, CPU (Ray started beforehand)."""
    from bench.jobs import bench_jobs as run_bench

    result = run_bench(ctx.cache_dir, videos=videos, workers=workers, command=" ".join(["vidx", *sys.argv[1:]]))

    def render(r: dict[str, Any]) -> None:
        out.print(f"{r['machine']['cpu']} · {r['machine']['cores']} cores · {r['videos']} clips")
        out.print(f"in-process: {r['local']['wall_s']:.2f} s · Ray: {r['ray']['wall_s']:.2f} s "
                  f"(Ray start-up, not counted: {r['ray_start_s']:.2f} s) · ratio {r['ray_over_local']:.2f} "
                  f"(target ≤ {r['target']})")

    emit(result, as_json, render)
