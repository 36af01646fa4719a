"""`vidx person ...` (named people and manual labels), `vidx people cluster` (unknown faces) and
`vidx people timeline` (how many people, when)."""

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
from vidx.commands.search import load_query_engines
from vidx.output import emit, out


@click.group("person")
def person() -> None:
    """Named people: photos of them, and manual labels (fixed facts) on face tracks."""


@person.command("add")
@click.argument("name")
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--face", type=click.IntRange(1), default=None, help="Which face of each photo (1 = largest).")
@out_option
@db_option
@device_option
@json_option
@pass_ctx
def person_add(ctx: Context, name: str, photos: tuple[Path, ...], face: int | None, out_dir: str, db_url: str | None,
               device: str, as_json: bool) -> None:
    """Add NAME with one or more PHOTOS (several photos make a better query); adds to an existing NAME."""
    from search.people import add_person

    catalog = open_catalog(out_dir, db_url)
    p, faces = add_person(catalog, load_query_engines(ctx, device), name, photos, face)
    result = {"id": p.id, "name": p.name, "photos": faces}
    emit(result, as_json, lambda r: out.print(f"{r['name']}: {len(r['photos'])} photo(s) added", markup=False))


@person.command("list")
@out_option
@db_option
@json_option
def person_list(out_dir: str, db_url: str | None, as_json: bool) -> None:
    """The named people, with how many photos and labels each has."""
    from search.people import list_people

    rows = [p.to_json() for p in list_people(open_catalog(out_dir, db_url))]

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("name", "photos", "labels")
        for r in rows:
            table.add_row(r["name"], str(r["exemplars"]), str(r["labels"]))
        out.print(table if rows else "no people yet (add one with `vidx person add NAME PHOTO...`)")

    emit(rows, as_json, render)


@person.command("label")
@click.argument("args", nargs=-1, required=True)
@click.option("--cluster", "cluster_id", type=int, default=None, help="Label every track of this cluster.")
@out_option
@db_option
@json_option
def person_label(args: tuple[str, ...], cluster_id: int | None, out_dir: str, db_url: str | None,
                 as_json: bool) -> None:
    """Confirm who a track is: `label TRACK_ID NAME`, or a whole cluster: `label --cluster C NAME`.

    Labels are fixed facts: searches by NAME always return them, and re-clustering never undoes them.
    """
    from search.people import label

    if cluster_id is not None:
        if len(args) != 1:
            raise click.UsageError("with --cluster give only the NAME")
        result = label(open_catalog(out_dir, db_url), args[0], cluster_id=cluster_id)
    else:
        if len(args) != 2:
            raise click.UsageError("usage: vidx person label TRACK_ID NAME (or --cluster C NAME)")
        result = label(open_catalog(out_dir, db_url), args[1], track_id=args[0])

    def render(r: dict[str, Any]) -> None:
        out.print(f"{len(r['labelled'])} track(s) labelled {r['name']}", markup=False)
        if r["already"]:
            out.print(f"{len(r['already'])} already were")
        if r["conflict"]:
            out.print(f"{len(r['conflict'])} left alone: labelled as someone else ({r['conflict']})")

    emit(result, as_json, render)


@person.command("unlabel")
@click.argument("track_id")
@click.option("--name", default=None, help="Remove only this person's label.")
@out_option
@db_option
@json_option
def person_unlabel(track_id: str, name: str | None, out_dir: str, db_url: str | None, as_json: bool) -> None:
    """Remove the manual label(s) on face track TRACK_ID (such as 12-3)."""
    from search.people import unlabel

    result = unlabel(open_catalog(out_dir, db_url), track_id, name)
    emit(result, as_json, lambda r: out.print(f"{r['removed']} label(s) removed"))


@click.group("people")
def people() -> None:
    """Unknown faces: group face tracks into identities so whole groups can be named at once."""


@people.command("cluster")
@click.option("--eps", type=click.FloatRange(0.05, 2.0), default=0.5, show_default=True,
              help="DBSCAN radius in L2 (dlib scale; same person is usually below 0.5).")
@click.option("--min-samples", type=click.IntRange(1), default=2, show_default=True,
              help="Tracks a dense neighbourhood needs (itself included); fewer is noise.")
@out_option
@db_option
@json_option
def people_cluster(eps: float, min_samples: int, out_dir: str, db_url: str | None, as_json: bool) -> None:
    """Cluster the face tracks (DBSCAN); name a cluster with `vidx person label --cluster C NAME`."""
    from search.locations import located_rows, output_root
    from search.people import cluster_index

    clusters = cluster_index(open_catalog(out_dir, db_url), out_dir, eps=eps, min_samples=min_samples)
    rows = located_rows(clusters, output_root(out_dir))

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("cluster", "tracks", "videos", "person")
        for r in rows:
            table.add_row(str(r["id"]), str(r["size"]), str(r["videos"]), r["person"] or "")
        out.print(table if rows else "no clusters (too few tracks, or none close enough)")

    emit(rows, as_json, render)


@people.command("timeline")
@click.argument("video")
@out_option
@db_option
@json_option
def people_timeline(video: str, out_dir: str, db_url: str | None, as_json: bool) -> None:
    """How many people a VIDEO (path, file name or id) shows, and when: its person tracks and head counts."""
    from search.locations import located_timeline, output_root
    from search.timeline import person_timeline

    result = located_timeline(person_timeline(open_catalog(out_dir, db_url), video), output_root(out_dir))

    def render(r: dict[str, Any]) -> None:
        out.print(f"{r['video']}: {len(r['person_tracks'])} person track(s), at most {r['max_people']} at once",
                  markup=False)
        table = Table("from", "to", "people")
        for seg in r["segments"]:
            table.add_row(fmt_time(seg["start_s"]), fmt_time(seg["end_s"]), str(seg["people"]))
        if r["segments"]:
            out.print(table)
        tracks = Table("person track", "from", "to", "sightings", "face tracks")
        for t in r["person_tracks"]:
            tracks.add_row(t["person_track_id"], fmt_time(t["start_s"]), fmt_time(t["end_s"]),
                           str(t["n_detections"]), " ".join(t["face_track_ids"]))
        if r["person_tracks"]:
            out.print(tracks)

    emit(result, as_json, render)
