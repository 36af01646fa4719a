"""`vidx search`: find where and when a person appears (by photo or by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from vidx.commands.common import (
    Context,
    db_option,
    device_option,
    fmt_time,
    json_option,
    open_catalog,
    out_option,
    pass_ctx,
)
from vidx.output import emit, out, say


def load_query_engines(ctx: Context, device: str) -> Any:
    from search.query import query_engines

    return query_engines(ctx.store(), device)


@click.command("search")
@click.option("--photo", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A photo of the person to find.")
@click.option("--person", "person_name", default=None, help="A named person (see `vidx person add`).")
@click.option("--face", type=click.IntRange(1), default=None, help="Which face of the photo (1 = largest).")
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="At most this many appearances.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Minimum calibrated score [default: 0.75, L2 0.545]; 0.5 is dlib's same-person boundary (L2 0.6).")
@click.option("--video", "video_glob", default=None, help="Only videos whose path (or file name) matches this glob.")
@click.option("--after", type=click.FloatRange(0), default=None, help="Only appearances still on after this second.")
@click.option("--before", type=click.FloatRange(0), default=None, help="Only appearances starting before this second.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Also write a self-contained HTML report to this file.")
@out_option
@db_option
@device_option
@json_option
@pass_ctx
def search_cmd(ctx: Context, photo: Path | None, person_name: str | None, face: int | None, top: int,
               threshold: float | None, video_glob: str | None, after: float | None, before: float | None,
               html_file: Path | None, out_dir: str, db_url: str | None, device: str, as_json: bool) -> None:
    """Find where and when a person appears: give a PHOTO of them, or the NAME of a known person."""
    from search.locations import located_rows, output_root
    from search.query import DEFAULT_THRESHOLD, Filters, detect_query_face, find_appearances

    if (photo is None) == (person_name is None):
        raise click.UsageError("give exactly one of --photo IMG or --person NAME")
    if after is not None and before is not None and after > before:
        raise click.UsageError("--after must not be later than --before")
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    catalog = open_catalog(out_dir, db_url)
    query = detect_query_face(load_query_engines(ctx, device), photo, face) if photo is not None else None
    hits = find_appearances(catalog, out_dir, query=query.embedding if query is not None else None,
                            person=person_name, top=top, threshold=threshold,
                            filters=Filters(video_glob, after, before))
    root = output_root(out_dir)
    if html_file is not None:
        from search.report import search_report

        html_file.write_text(search_report(catalog, hits, out_root=root, query=query, person=person_name,
                                           threshold=threshold), encoding="utf-8")
        say(f"report written to {html_file}")
    rows = located_rows(hits, root)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            faces = f" ({query.faces_in_photo} face(s) in the photo)" if query else ""
            out.print(f"no appearance scores {threshold} or more{faces}")
            return
        table = Table("score", "video", "from", "to", "track", "person track", "person")
        for r in rows:
            who = (r["person"] or "") + (" (label)" if r["labelled"] else "")
            table.add_row(f"{r['score']:.2f}", Path(r["video"]).name, fmt_time(r["start_s"]), fmt_time(r["end_s"]),
                          r["track_id"], r["person_track_id"] or "", who)
        out.print(table)
        out.print(f"{len(rows)} appearance(s); thumbnails and full paths with --json")

    emit(rows, as_json, render)
