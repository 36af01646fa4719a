"""What the commands share: the context object, common options, and small helpers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from vidx.output import say


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
engine_option = click.option("--engine", type=click.Choice(["auto", "onnxruntime", "onnxruntime-fp16",
                                                             "onnxruntime-int8", "tensorrt"]),
                             default="auto", show_default=True,
                             help="Inference runtime (auto: TensorRT, else ONNX Runtime, both FP16 on a GPU; "
                                  "onnxruntime: FP32; onnxruntime-fp16: FP16 on ONNX Runtime's CUDA provider; "
                                  "onnxruntime-int8: the person detector in INT8 on a CPU, faster, person tracks "
                                  "in crowds cut at other places).")


def engine_start_option(default: str = "background") -> Any:
    """--engine-start, handed to the command as `engine_start` (the former --quick-start, kept hidden for scripts
    written for it, is --engine-start quick)."""

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        def command(*args: Any, engine_start: str, quick_start: bool, **kwargs: Any) -> Any:
            return fn(*args, engine_start="quick" if quick_start else engine_start, **kwargs)

        command = click.option("--quick-start", is_flag=True, hidden=True,
                               help="The former name of --engine-start quick.")(command)
        return click.option(
            "--engine-start", type=click.Choice(["background", "wait", "quick"]), default=default, show_default=True,
            help="How a GPU worker sets its models up. background: it starts within seconds on quick sessions "
                 "while the fastest ones are set up behind them and take over (10 of a 1080p video's 11 shapes "
                 "within 80 s on an H100); wait: the fastest ones before the first frame (~50 s); quick: the quick "
                 "ones only (fewer frames per second, most when every frame is analysed). Same results up to "
                 "rounding (docs/gpu.md).")(command)

    return decorate


@dataclass(frozen=True)
class FaceDetectorArgs:
    """--face-detector, --face-search and --full-search-every, as one argument."""

    name: str = "blazeface"
    search: str = "guided"
    full_search_every_s: float = 2.0


def face_detector_option(fn: Any) -> Any:
    """The face detector's options, handed to the command as one FaceDetectorArgs named `face_detector`."""

    @functools.wraps(fn)
    def command(*args: Any, face_detector: str, face_search: str, full_search_every: float, **kwargs: Any) -> Any:
        return fn(*args, face_detector=FaceDetectorArgs(face_detector, face_search, full_search_every), **kwargs)

    command = click.option(
        "--full-search-every", type=click.FloatRange(0, 86400), default=2.0, show_default=True, metavar="SECONDS",
        help="Guided search: seconds of video between searches of whole frames for the smallest faces.")(command)
    command = click.option(
        "--face-search", type=click.Choice(["guided", "full"]), default="guided", show_default=True,
        help="Where BlazeFace looks for the smallest faces (its costliest pyramid level): guided, around the "
             "people found in each frame plus the whole frame every --full-search-every seconds; full, the "
             "whole of every analysed frame (docs/performance.md compares them). Part of the run key.")(command)
    return click.option(
        "--face-detector", type=click.Choice(["blazeface", "centerface"]), default="blazeface", show_default=True,
        help="blazeface: BlazeFace over an image pyramid; centerface: CenterFace over whole frames (docs/models.md "
             "compares them). Part of the run key: changing it reindexes.")(command)


def sampling_options(fn: Any) -> Any:
    fn = click.option("--sample-fps", type=click.FloatRange(0.01, 240), default=2.0, show_default=True,
                      help="Frames analysed per second of video.")(fn)
    fn = click.option("--every-frame", is_flag=True, help="Analyse every decoded frame.")(fn)
    fn = click.option("--keyframes", is_flag=True, help="Decode and analyse key frames only (fast first pass).")(fn)
    fn = click.option("--min-face", type=click.IntRange(8, 4096), default=24, show_default=True,
                      help="Smallest face (pixels wide) to find; smaller values cost more tiles.")(fn)
    fn = click.option("--no-persons", is_flag=True, help="Skip person detection.")(fn)
    fn = click.option("--persons-every", type=click.FloatRange(0, 86400), default=0.1, show_default=True,
                      metavar="SECONDS",
                      help="Seconds of video between the frames the person detector runs on when frames are "
                           "analysed closer together (--every-frame); between them, people are carried along "
                           "their tracks and only faces are detected. 0: every analysed frame. Part of the run key "
                           "where frames are that close.")(fn)
    return fn


def build_settings(device: str, engine: str, sample_fps: float, every_frame: bool, keyframes: bool, min_face: int,
                   no_persons: bool, face_detector: FaceDetectorArgs | None = None, persons_every: float = 0.1,
                   engine_start: str = "background") -> Any:
    from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig

    if every_frame and keyframes:
        raise click.UsageError("--every-frame and --keyframes exclude each other")
    mode = "every-frame" if every_frame else "keyframes" if keyframes else "fps"
    detector = face_detector or FaceDetectorArgs()
    return IndexSettings(
        sampling=SamplingConfig(mode=mode, fps=sample_fps),  # type: ignore[arg-type]
        detection=DetectionConfig(min_face_px=min_face, detect_persons=not no_persons,
                                  face_detector=detector.name, face_search=detector.search,  # type: ignore[arg-type]
                                  full_search_every_s=detector.full_search_every_s, persons_every_s=persons_every),
        runtime=RuntimeConfig(device=device, engine=engine,  # type: ignore[arg-type]
                              engine_start=engine_start),  # type: ignore[arg-type]
    )


class ArchiveParam(click.ParamType):
    """A local folder or list file (must exist), or an object-store URI such as s3://bucket/prefix (kept as is)."""

    name = "archive"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, str) and "://" in value and not value.startswith("file://"):
            return value
        return click.Path(exists=True, path_type=Path).convert(value, param, ctx)


def archive_argument(fn: Any) -> Any:
    return click.argument("archive", type=ArchiveParam())(fn)


def resolved_archive(archive: Path | str) -> str:
    """How an archive is stored in a schedule: an absolute path, or the URI as given."""
    return archive if isinstance(archive, str) else str(archive.resolve())


out_option = click.option("--out", "out_dir", default="./vidx-data", show_default=True, envvar="VIDX_OUT",
                          help="Output folder (or object-store URI) for Parquet parts and thumbnails.")
db_option = click.option("--db", "db_url", default=None, envvar="VIDX_DB",
                         help="SQLAlchemy URL of the index [default: sqlite:///OUT/index.sqlite].")


def db_url_for(out_dir: str, db_url: str | None) -> str:
    from catalog.db import default_db_url

    if db_url:
        return db_url
    if "://" in out_dir:
        raise click.UsageError("--db is required when --out is an object-store URI")
    return default_db_url(out_dir)


def open_catalog(out_dir: str, db_url: str | None, *, create: bool = False) -> Any:
    """The SQL index of a command. Only commands that index (`create`) may create it, and then only the default
    --out folder is made; a command that reads refuses a place without an index and writes nothing there."""
    from catalog.db import Catalog

    url = db_url_for(out_dir, db_url)
    if create and db_url is None:
        Path(out_dir).expanduser().mkdir(parents=True, exist_ok=True)  # results are written there too
    return Catalog(url, create=create, make_dirs=False)


def fmt_time(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:05.2f}" if h else f"{m}:{s:05.2f}"




def refresh_after_job(catalog: Any, out_uri: str | None) -> None:
    """Bring the search index up to date once a job run from the command line has ended."""
    from search.vector_index import refresh_after_job as refresh

    refresh(catalog, out_uri)
