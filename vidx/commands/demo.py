"""`vidx demo`: the main job end to end on a sample archive."""

from __future__ import annotations

from pathlib import Path

import click

from vidx.commands.common import Context, db_url_for, device_option, json_option, pass_ctx, refresh_after_job
from vidx.commands.search import search_cmd
from vidx.output import out, say


@click.command("demo")
@click.option("--dir", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("vidx-demo"),
              show_default=True, help="Where the sample archive, the outputs and the index go.")
@device_option
@json_option
@pass_ctx
def demo_cmd(ctx: Context, demo_dir: Path, device: str, as_json: bool) -> None:
    """The main job end to end on a sample archive built from real photos: index it, then find a person.

    The query photo (obama2.jpg from face_recognition's test images) appears in none of the videos;
    two other photos of the same man do, in two videos, at known times.
    """
    from catalog.db import Catalog
    from engines.photos import photo_path
    from jobs.runner import LocalExecutor, run_job
    from samples.demo import QUERY_PHOTO, build_demo_archive, expected_appearances
    from schemas.config import IndexSettings, RuntimeConfig
    from vidx.progress import JobProgress

    archive = demo_dir / "archive"
    out_dir = demo_dir / "out"
    videos = build_demo_archive(archive, demo_dir / "truth.json", ctx.cache_dir, say)
    # a handful of short videos: models that start in seconds beat a slightly faster steady state on a GPU
    settings = IndexSettings(runtime=RuntimeConfig(device=device, engine_start="quick"))  # type: ignore[arg-type]
    catalog = Catalog(db_url_for(str(out_dir), None))
    with JobProgress(quiet=as_json) as progress:
        result = run_job(archive, catalog=catalog, out_uri=str(out_dir), settings=settings,
                         executor=LocalExecutor(), cache_dir=ctx.cache_dir, events=progress.events())
    refresh_after_job(catalog, str(out_dir))
    if not as_json:
        JobProgress.render_summary(result.summary, str(out_dir), catalog.url)
    query = photo_path(QUERY_PHOTO, ctx.cache_dir)
    if not as_json:
        out.print(f"\n[bold]vidx search --photo {query}[/bold]")
    ctx_search = click.get_current_context()
    ctx_search.invoke(search_cmd, photo=query, face=None, top=20, threshold=0.5, video_glob=None,
                      out_dir=str(out_dir), db_url=None, device=device, as_json=as_json)
    if not as_json:
        out.print("expected (ground truth): " + "; ".join(
            f"{name} {a.start_s:.1f}-{a.end_s:.1f}s" for name, a in expected_appearances(videos)))
