"""`vidx search`: find where and when a person appears."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from vidx.commands.common import (
    Context,
    db_option,
    db_url_for,
    device_option,
    fmt_time,
    json_option,
    out_option,
    pass_ctx,
)
from vidx.output import emit, out


@click.command("search")
@click.option("--photo", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A photo of the person to find.")
@click.option("--face", type=click.IntRange(1), default=None, help="Which face of the photo (1 = largest).")
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="At most this many appearances.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Minimum calibrated score (0.5 = dlib's same-person boundary, L2 0.6).")
@click.option("--video", "video_glob", default=None, help="Only videos whose path matches this glob.")
@out_option
@db_option
@device_option
@json_option
@pass_ctx
def search_cmd(ctx: Context, photo: Path, face: int | None, top: int, threshold: float, video_glob: str | None,
               out_dir: str, db_url: str | None, device: str, as_json: bool) -> None:
    """Find where and when the person in PHOTO appears in the indexed videos."""
    from engines.loader import load_engines
    from jobs.catalog import Catalog
    from schemas.config import DetectionConfig, RuntimeConfig
    from vidx.search import query_embedding, search_tracks

    catalog = Catalog(db_url_for(out_dir, db_url))
    engines = load_engines(DetectionConfig(detect_persons=False), RuntimeConfig(device=device),  # type: ignore[arg-type]
                           store=ctx.store(), warm_up=False)
    query, about = query_embedding(engines, photo, face)
    hits = search_tracks(catalog, query, top=top, threshold=threshold, video_glob=video_glob)
    root = Path(out_dir).expanduser().resolve() if "://" not in out_dir else None
    rows = []
    for h in hits:
        d = h.to_json()
        if h.thumbnail and root is not None:
            d["thumbnail"] = str(root / h.thumbnail)
        rows.append(d)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            out.print(f"no appearance scores {threshold} or more ({about['faces_in_photo']} face(s) in the photo)")
            return
        table = Table("score", "video", "from", "to", "track")
        for r in rows:
            table.add_row(f"{r['score']:.2f}", Path(r["video"]).name, fmt_time(r["start_s"]), fmt_time(r["end_s"]),
                          str(r["track_id"]))
        out.print(table)
        out.print(f"{len(rows)} appearance(s); thumbnails and full paths with --json")

    emit(rows, as_json, render)


