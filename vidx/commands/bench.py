"""`vidx bench`: benchmarks whose results go to docs/benchmarks.md."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from vidx.commands.common import Context, device_option, engine_option, json_option, pass_ctx
from vidx.output import emit, out


@click.group()
def bench() -> None:
    """Benchmarks (results go to docs/benchmarks.md with the machine and command)."""


@bench.command("engines")
@device_option
@engine_option
@click.option("--batch", "batches", default="1,8,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", default=2.0, show_default=True, help="Time spent per model and batch size.")
@json_option
@pass_ctx
def bench_engines(ctx: Context, device: str, engine: str, batches: str, seconds: float, as_json: bool) -> None:
    """Images (or faces) per second for each model, runtime and batch size."""
    from vidx.benchmarks import bench_engines as run_bench

    sizes = [int(b) for b in batches.split(",") if b.strip()]
    result = run_bench(ctx.store(), device=device, engine=engine, batches=sizes, seconds=seconds,
                       command=" ".join(["vidx", *sys.argv[1:]]))

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} · {res['machine'].get('gpu') or 'no GPU'}")
        table = Table("model", "runtime", "batch", "items/s", "ms/batch (median)")
        for r in res["rows"]:
            table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['items_per_s']:,.0f}",
                          f"{r['ms_per_batch']:.2f}")
        out.print(table)

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
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True,
              help="Where exact search runs (gpu: CuPy).")
@click.option("--end-to-end", type=click.IntRange(0), default=0, show_default=True,
              help="Also time `vidx search`'s whole path over a SQLite index of this many tracks (0 skips).")
@click.option("--work-dir", "search_work_dir", type=click.Path(file_okay=False), default="vidx-bench/search",
              show_default=True, help="Where the end-to-end SQLite index is written.")
@json_option
def bench_search_cmd(exact_tracks: int, ann_tracks: int, queries: int, nprobes: str, threads: int | None, device: str,
                     end_to_end: int, search_work_dir: str, as_json: bool) -> None:
    """Exact and ANN top-10 over synthetic dlib-like face descriptors: latency, recall, build time, memory."""
    from vidx.bench_search import bench_search
    from vidx.output import say

    result = bench_search(exact_tracks=exact_tracks, ann_tracks=ann_tracks, queries=queries,
                          nprobes=[int(p) for p in nprobes.split(",") if p.strip()], device=device, threads=threads,
                          say=say, command=" ".join(["vidx", *sys.argv[1:]]), end_to_end=end_to_end,
                          work_dir=search_work_dir)

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} · {res['machine']['cores']} cores · {res['threads']} threads")
        if "end_to_end" in res:
            out.print(f"end to end: {res['end_to_end']}")
        table = Table("search", "tracks", "nprobe", "p50 ms", "p95 ms", "recall@10", "known", "L2<0.6", "build s")
        if "exact" in res:
            e = res["exact"]
            table.add_row(f"exact ({e['device']})", f"{e['tracks']:,}", "", f"{e['top10']['p50_ms']:.2f}",
                          f"{e['top10']['p95_ms']:.2f}", "1", "1", "1", f"{e['build_s']:.1f}")
        if "ann" in res:
            a = res["ann"]
            for r in a["nprobe"]:
                table.add_row(a["index"], f"{a['tracks']:,}", str(r["nprobe"]), f"{r['top10']['p50_ms']:.2f}",
                              f"{r['top10']['p95_ms']:.2f}", f"{r['recall_at_10']:.3f}",
                              f"{r['recall_known_people']:.3f}", f"{r['recall_same_person_l2_0_6']:.3f}",
                              f"{a['build_s']:.0f}")
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
    from jobs.bench import bench_jobs as run_bench

    result = run_bench(ctx.cache_dir, videos=videos, workers=workers, command=" ".join(["vidx", *sys.argv[1:]]))

    def render(r: dict[str, Any]) -> None:
        out.print(f"{r['machine']['cpu']} · {r['machine']['cores']} cores · {r['videos']} clips")
        out.print(f"in-process: {r['local']['wall_s']:.2f} s · Ray: {r['ray']['wall_s']:.2f} s "
                  f"(Ray start-up, not counted: {r['ray_start_s']:.2f} s) · ratio {r['ray_over_local']:.2f} "
                  f"(target ≤ {r['target']})")

    emit(result, as_json, render)
