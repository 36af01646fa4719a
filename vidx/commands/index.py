"""`vidx index`: index an archive in the foreground."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vidx.commands.common import (
    Context,
    build_settings,
    db_option,
    db_url_for,
    device_option,
    engine_option,
    json_option,
    out_option,
    pass_ctx,
    sampling_options,
)
from vidx.output import emit


@click.command("index")
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@out_option
@db_option
@device_option
@engine_option
@sampling_options
@json_option
@pass_ctx
def index_cmd(ctx: Context, archive: Path, out_dir: str, db_url: str | None, device: str, engine: str,
              sample_fps: float, every_frame: bool, keyframes: bool, min_face: int, no_persons: bool,
              as_json: bool) -> None:
    """Index ARCHIVE (a folder, searched recursively, or a text file listing videos) in the foreground."""
    from jobs.catalog import Catalog
    from jobs.runner import LocalExecutor, run_job
    from vidx.progress import JobProgress

    settings = build_settings(device, engine, sample_fps, every_frame, keyframes, min_face, no_persons)
    catalog = Catalog(db_url_for(out_dir, db_url))
    with JobProgress(quiet=as_json) as progress:
        result = run_job(archive, catalog=catalog, out_uri=out_dir, settings=settings, executor=LocalExecutor(),
                         cache_dir=ctx.cache_dir, events=progress.events())
    summary = {**result.summary, "workers": result.workers, "out": out_dir, "db": catalog.url}
    emit(summary, as_json, lambda s: JobProgress.render_summary(s))
    if summary["failed"] or summary["unreadable"]:
        sys.exit(3)


