"""A worker: engines loaded once, videos processed one after another, outcomes handed back.

The same class runs in-process (`vidx index` on one machine) and inside a Ray actor (one per GPU).
It never writes the SQL index: it writes Parquet parts and thumbnails and returns plain values.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode.base import open_decoder
from indexer.errors import VideoError
from indexer.pipeline import VideoIndexer, VideoResult
from indexer.write import OutputStore, write_video_outputs
from jobs.catalog import TrackRow, VideoOutcome
from schemas.config import PIPELINE_VERSION, IndexSettings
from schemas.sql import embedding_to_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    video_id: int
    path: str
    fingerprint: str
    run_key: str
    task_id: int | None = None


def track_rows(result: VideoResult) -> list[TrackRow]:
    t = result.tracks.to_pydict()
    return [
        TrackRow(track_index=t["track_id"][i], start_s=t["start_s"][i], end_s=t["end_s"][i], n_faces=t["n_faces"][i],
                 embedding=embedding_to_bytes(t["embedding"][i]), quality=t["quality"][i],
                 best_pts_s=t["best_pts_s"][i], thumbnail=t["thumbnail"][i])
        for i in range(result.tracks.num_rows)
    ]


class VideoWorker:
    def __init__(self, settings: IndexSettings, out_uri: str, *, cache_dir: Path | None = None, name: str | None = None):
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.store = OutputStore(out_uri)
        models = ModelStore(cache_dir)
        self.engines = load_engines(settings.detection, settings.runtime, store=models)
        self.decoder = open_decoder(settings.runtime.device, threads=settings.runtime.decode_threads)
        self.indexer = VideoIndexer(self.engines, settings, self.decoder)

    @property
    def model_versions(self) -> dict[str, str]:
        return self.engines.model_versions

    def describe(self) -> dict[str, str]:
        return {"worker": self.name, "decoder": self.decoder.device, **self.engines.describe()}

    def process(self, spec: TaskSpec) -> VideoOutcome:
        """Index one video; a VideoError becomes a failed outcome, anything else propagates."""
        started = time.monotonic()
        path = Path(spec.path)
        try:
            result = self.indexer.index(path, video_id=spec.video_id, run_key=spec.run_key)
            files = write_video_outputs(
                self.store, result, video_id=spec.video_id, run_key=spec.run_key, pipeline_version=PIPELINE_VERSION,
                model_versions=self.model_versions, params=self.settings.result_params(), fingerprint=spec.fingerprint)
        except VideoError as exc:
            log.warning("%s", exc.describe())
            return VideoOutcome(spec.video_id, "failed", error=exc.message, elapsed_s=time.monotonic() - started,
                                worker=self.name, frames_decoded=self.decoder.stats.frames_decoded)
        info = result.info
        return VideoOutcome(
            spec.video_id, "done", codec=info.codec, width=info.width, height=info.height, fps=info.fps,
            duration_s=info.duration_s, frames_decoded=result.frames_decoded, frames_analysed=result.frames_analysed,
            elapsed_s=time.monotonic() - started, tracks=track_rows(result), files=files, worker=self.name)
