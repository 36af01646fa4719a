"""`vidx index`: index an archive in the foreground (the foreground form of `vidx job submit`)."""

from __future__ import annotations

from pathlib import Path

import click

from vidx.commands.common import (
    Context,
    FaceDetectorArgs,
    archive_argument,
    build_settings,
    db_option,
    device_option,
    engine_option,
    engine_start_option,
    face_detector_option,
    json_option,
    out_option,
    pass_ctx,
    sampling_options,
)
from vidx.commands.job import (
    EXECUTORS,
    ExecutorArgs,
    executor_options,
    finish,
    plan_options,
    run_foreground,
)


@click.command("index")
@archive_argument
@out_option
@db_option
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: worker processes on this machine, --workers-per-gpu per GPU (without a GPU, one worker "
                   "in this process); ray: worker actors on Ray (a local instance or --address).")
@executor_options
@plan_options
@device_option
@engine_option
@engine_start_option()
@sampling_options
@face_detector_option
@json_option
@pass_ctx
def index_cmd(ctx: Context, archive: Path | str, out_dir: str, db_url: str | None, executor: str,
              executor_args: ExecutorArgs, reprocess_stale: bool, retry_failed: bool, device: str, engine: str,
              engine_start: str, sample_fps: float, every_frame: bool, keyframes: bool, min_face: int,
              no_persons: bool, persons_every: float, face_detector: FaceDetectorArgs, as_json: bool) -> None:
    """Index ARCHIVE (a folder, searched recursively, or a text file listing videos) in the foreground."""
    settings = build_settings(device, engine, sample_fps, every_frame, keyframes, min_face, no_persons, face_detector,
                              persons_every, engine_start)
    if executor_args.address and executor == "local":
        executor = "ray"  # naming a cluster means running on it
    ex = executor_args.to_json(executor, device)
    summary = run_foreground(ctx, archive, out_dir=out_dir, db_url=db_url, settings=settings, executor=ex,
                             reprocess_stale=reprocess_stale, retry_failed=retry_failed, as_json=as_json)
    finish(summary, as_json)
