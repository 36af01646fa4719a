"""`vidx bench`: benchmarks whose results go to docs/performance.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from schemas.config import NVDEC_VIDEOS_IN_FLIGHT
from vidx.commands.common import Context, device_option, engine_option, engine_start_option, json_option, pass_ctx
from vidx.output import emit, show


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
    from bench.tables import engines_report

    sizes = [int(b) for b in batches.split(",") if b.strip()]
    result = run_bench(ctx.store(), device=device, engine=engine, batches=sizes, seconds=seconds,
                       command=" ".join(["vidx", *sys.argv[1:]]))

    emit(result, as_json, lambda res: show(engines_report(res)))


bench_dir_option = click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                                default=Path("vidx-bench"), show_default=True,
                                help="Where the 1080p benchmark clips are built (once) and kept.")
face_search_option = click.option(
    "--face-search", type=click.Choice(["guided", "full"]), default="guided", show_default=True,
    help="Where the finest face level looks (as `vidx index --face-search`): run both to compare them.")
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
@face_search_option
@engine_option
@save_option
@json_option
@pass_ctx
def bench_pipeline(ctx: Context, work_dir: Path, codec: str, face_search: str, engine: str, save: Path | None,
                   as_json: bool) -> None:
    """The CPU pipeline on 1080p30 clips at the default sampling, against `ffmpeg -f null` on the same files."""
    from bench.tables import pipeline_report
    from bench.video import bench_pipeline as run_bench
    from schemas.config import DetectionConfig
    from vidx.output import say

    result = run_bench(ctx.cache_dir, work_dir, codec=codec, command=" ".join(["vidx", *sys.argv[1:]]), say=say,
                       detection=DetectionConfig(face_search=face_search),  # type: ignore[arg-type]
                       engine=engine)
    _save(result, save)

    emit(result, as_json, lambda res: show(pipeline_report(res)))


@bench.command("gpu")
@bench_dir_option
@click.option("--decoders", default="7,14,21", show_default=True, help="Decoder counts tried for decode-only.")
@click.option("--copies", default=28, show_default=True, help="Videos per codec (the clips, repeated).")
@click.option("--cpu-videos", default=2, show_default=True, help="Videos for the CPU pipeline's row.")
@click.option("--in-flight", type=click.IntRange(0, 256), default=NVDEC_VIDEOS_IN_FLIGHT, show_default=True,
              metavar="N", help="Videos in flight in the pipeline rows, as a GPU worker by default; 0: as many as the "
                                "best decode-only row had decoders.")
@click.option("--codecs", default="h264,hevc", show_default=True, help="Codecs to measure.")
@face_search_option
@engine_start_option("wait")
@save_option
@json_option
@pass_ctx
def bench_gpu(ctx: Context, work_dir: Path, decoders: str, copies: int, cpu_videos: int, in_flight: int,
              codecs: str, face_search: str, engine_start: str, save: Path | None, as_json: bool) -> None:
    """NVDEC decode-only vs the full GPU pipeline (default sampling, every frame, key frames) vs the CPU.

    The engines are set up before the rows (--engine-start wait), so the rows measure their steady state."""
    from bench.tables import gpu_report
    from bench.video import bench_gpu as run_bench
    from schemas.config import DetectionConfig
    from vidx.output import say

    result = run_bench(ctx.cache_dir, work_dir, decoders=[int(d) for d in decoders.split(",")], copies=copies,
                       cpu_videos=cpu_videos, in_flight=in_flight,
                       command=" ".join(["vidx", *sys.argv[1:]]), say=say,
                       codecs=tuple(codecs.split(",")),
                       detection=DetectionConfig(face_search=face_search),  # type: ignore[arg-type]
                       engine_start=engine_start)  # type: ignore[arg-type]
    _save(result, save)

    emit(result, as_json, lambda res: show(gpu_report(res)))


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
    from bench.tables import search_report
    from vidx.output import say

    result = bench_search(exact_tracks=exact_tracks, ann_tracks=ann_tracks, queries=queries,
                          nprobes=[int(p) for p in nprobes.split(",") if p.strip()], threads=threads,
                          say=say, command=" ".join(["vidx", *sys.argv[1:]]), end_to_end=end_to_end,
                          work_dir=search_work_dir, pgvector_url=pgvector_url,
                          ef_searches=tuple(int(e) for e in ef_searches.split(",") if e.strip()))

    emit(result, as_json, lambda res: show(search_report(res)))


@bench.command("jobs")
@click.option("--videos", type=click.IntRange(1, 1000), default=20, show_default=True, help="Short clips to index.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Ray CPU workers [default: CPUs/4, at least 1].")
@json_option
@pass_ctx
def bench_jobs(ctx: Context, videos: int, workers: int | None, as_json: bool) -> None:
    """A job on a local Ray instance against the in-process pipeline, same clips, CPU (Ray started beforehand)."""
    from bench.jobs import bench_jobs as run_bench
    from bench.tables import jobs_report

    result = run_bench(ctx.cache_dir, videos=videos, workers=workers, command=" ".join(["vidx", *sys.argv[1:]]))

    emit(result, as_json, lambda res: show(jobs_report(res)))
