"""What each finished video costs the thread that runs the pipeline, outside the models: `vidx index` in this process,
with wall-clock timers (no profiler) around the three calls made for a finished video.

    PYTHONPATH=. python tools/video_finish_cost.py ARCHIVE --device cpu --every-frame --out OUT

(any `vidx index` options after ARCHIVE).

finish: VideoIndexer._finish (the video's Arrow tables and JPEG thumbnails; inside index_many, so in `vidx bench`'s
pipeline rows too). write: write_video_outputs (Parquet files and thumbnails to the output store, in the worker).
record: Catalog.record (the outcome into the SQL index, where the worker runs in the command's own process).
Prints each call's seconds, one per video, after the command's own output.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import catalog.db
import indexer.pipeline
import jobs.worker

SECONDS: dict[str, list[float]] = {"finish": [], "write": [], "record": []}


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[name].append(round(time.perf_counter() - start, 4))

    return wrapper


def main() -> None:
    indexer.pipeline.VideoIndexer._finish = timed("finish", indexer.pipeline.VideoIndexer._finish)  # type: ignore[method-assign]
    jobs.worker.write_video_outputs = timed("write", jobs.worker.write_video_outputs)
    catalog.db.Catalog.record = timed("record", catalog.db.Catalog.record)  # type: ignore[method-assign]
    from vidx.cli import cli

    try:
        cli(["index", *sys.argv[1:]], standalone_mode=False)
    finally:
        print(json.dumps({"seconds": SECONDS}))


if __name__ == "__main__":
    main()
