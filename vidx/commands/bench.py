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


