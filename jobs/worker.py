"""A worker: engines loaded once, several videos processed at once, outcomes handed back.

The same class runs in-process (`vidx index`, LocalExecutor) and inside a Ray actor (one per GPU,
jobs.ray_executor). It never writes the SQL index: it writes Parquet parts and thumbnails and returns
plain values. Each "lane" is an indexer of its own; all lanes share the engines, so a GPU
worker keeps several NVDEC sessions busy while models are loaded only once.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode.base import open_decoder
from indexer.errors import VideoError
from indexer.pipeline import VideoIndexer, VideoResult, VideoTask
from indexer.write import OutputStore, write_video_outputs
from jobs.outcome import TrackRow, VideoOutcome
from schemas.config import PIPELINE_VERSION, IndexSettings
from schemas.embeddings import embedding_to_bytes

log = logging.getLogger(__name__)

FAULTS_ENV = "VIDX_FAULTS"
"""Fault injection for the reliability tests: `crash=NAME;hang=NAME` makes the worker process segfault
(SIGSEGV) or hang when it starts a video whose path contains NAME, like a broken decoder would."""


@dataclass(frozen=True)
class TaskSpec:
    video_id: int
    path: str
    fingerprint: str
    run_key: str
    task_id: int | None = None
    attempts: int = 1
    size: int = 0


def track_rows(result: VideoResult) -> list[TrackRow]:
    t = result.tracks.to_pydict()
    return [
        TrackRow(track_index=t["track_id"][i], start_s=t["start_s"][i], end_s=t["end_s"][i], n_faces=t["n_faces"][i],
                 embedding=embedding_to_bytes(t["embedding"][i]), quality=t["quality"][i],
                 best_pts_s=t["best_pts_s"][i], thumbnail=t["thumbnail"][i])
        for i in range(result.tracks.num_rows)
    ]


def parse_faults(text: str | None) -> dict[str, str]:
    """`crash=a.mp4;hang=b.mp4` -> {"crash": "a.mp4", "hang": "b.mp4"}."""
    faults: dict[str, str] = {}
    for part in (text or "").split(";"):
        kind, _, name = part.partition("=")
        if kind.strip() in ("crash", "hang") and name.strip():
            faults[kind.strip()] = name.strip()
    return faults


class VideoWorker:
    """Engines loaded (and warmed up) once; `lanes` decoders so that many videos run at once."""

    def __init__(self, settings: IndexSettings, out_uri: str, *, cache_dir: Path | None = None, name: str | None = None,
                 lanes: int = 1, faults: str | None = None):
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.store = OutputStore(out_uri)
        models = ModelStore(cache_dir)
        # Warm-up runs each model once here: the first run allocates memory and picks kernels.
        self.engines = load_engines(settings.detection, settings.runtime, store=models)
        self.lanes: queue.Queue[VideoIndexer] = queue.Queue()
        """One indexer per lane (each copies its decoder per video); all share the engines."""
        self.n_lanes = max(1, lanes)
        # One decoder template for all lanes: each indexer copies it per video (choosing it asks NVDEC once).
        decoder = open_decoder(settings.runtime.device, threads=settings.runtime.decode_threads)
        for _ in range(self.n_lanes):
            self.lanes.put(VideoIndexer(self.engines, settings, decoder))
        self.decoder_device = decoder.device
        self.faults = parse_faults(faults if faults is not None else os.environ.get(FAULTS_ENV))
        self._progress: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def model_versions(self) -> dict[str, str]:
        return self.engines.model_versions

    def describe(self) -> dict[str, str]:
        return {"worker": self.name, "decoder": self.decoder_device, "lanes": str(self.n_lanes),
                **self.engines.describe()}

    def stalled_for(self) -> dict[int, float]:
        """Seconds since each video in progress last moved (a decoded batch), by video id."""
        now = time.monotonic()
        with self._lock:
            return {vid: now - t for vid, t in self._progress.items()}

    def _moved(self, video_id: int) -> None:
        with self._lock:
            self._progress[video_id] = time.monotonic()

    def _inject(self, path: str) -> None:
        if (name := self.faults.get("crash")) and name in path:
            log.error("fault injection: crashing on %s", path)
            os.kill(os.getpid(), signal.SIGSEGV)
        if (name := self.faults.get("hang")) and name in path:
            log.error("fault injection: hanging on %s", path)
            while True:
                time.sleep(3600)

    def process(self, spec: TaskSpec) -> VideoOutcome:
        """Index one video; a VideoError becomes a failed outcome, anything else propagates."""
        lane = self.lanes.get()
        started = time.monotonic()
        self._moved(spec.video_id)
        try:
            self._inject(spec.path)
            return self._process(lane, spec, started)
        finally:
            with self._lock:
                self._progress.pop(spec.video_id, None)
            self.lanes.put(lane)

    def process_many(self, specs: Iterable[TaskSpec], in_flight: int | None = None
                     ) -> Iterator[tuple[TaskSpec, VideoOutcome]]:
        """Index videos `in_flight` at once through one indexer, so that their sampled frames share the
        models' batches (on a GPU: several NVDEC sessions busy, full batches); outcomes as videos finish.

        `specs` is read lazily, one spec each time a video finishes: a claim from the job queue happens
        only when there is room for the video. The engines are shared with `process`; use one of the two
        at a time.
        """
        lane = self.lanes.get()
        started: dict[int, tuple[TaskSpec, float]] = {}

        def tasks() -> Iterator[VideoTask]:
            for spec in specs:
                started[spec.video_id] = (spec, time.monotonic())
                self._moved(spec.video_id)
                self._inject(spec.path)
                yield VideoTask(Path(spec.path), spec.video_id, spec.run_key)

        try:
            for task, result in lane.index_many(tasks(), in_flight=in_flight,
                                                        on_progress=lambda t, n, pts: self._moved(t.video_id)):
                spec, t0 = started.pop(task.video_id)
                with self._lock:
                    self._progress.pop(spec.video_id, None)
                try:
                    outcome = self._outcome(spec, result, t0)
                except Exception as exc:  # not the video's own fault (I/O, a bug): recorded, and the job goes on
                    log.exception("worker error on %s", spec.path)
                    outcome = self.error_outcome(spec, exc)
                yield spec, outcome
        finally:
            with self._lock:
                for video_id in started:
                    self._progress.pop(video_id, None)
            self.lanes.put(lane)

    def error_outcome(self, spec: TaskSpec, exc: BaseException) -> VideoOutcome:
        """A video failed for a reason that is not its own (the output store, a bug)."""
        return VideoOutcome(spec.video_id, "failed", error=f"worker error: {type(exc).__name__}: {exc}",
                            worker=self.name)

    def _process(self, lane: VideoIndexer, spec: TaskSpec, started: float) -> VideoOutcome:
        try:
            result: VideoResult | VideoError = lane.index(
                Path(spec.path), video_id=spec.video_id, run_key=spec.run_key,
                on_progress=lambda n, pts: self._moved(spec.video_id))
        except VideoError as exc:
            result = exc
        return self._outcome(spec, result, started)

    def _outcome(self, spec: TaskSpec, result: VideoResult | VideoError, started: float) -> VideoOutcome:
        """Write a finished video's outputs; a VideoError (here or while writing) is a failed outcome."""
        if isinstance(result, VideoError):
            return self._failed(spec, result, started)
        try:
            files = write_video_outputs(
                self.store, result, video_id=spec.video_id, run_key=spec.run_key, pipeline_version=PIPELINE_VERSION,
                model_versions=self.model_versions, params=self.settings.result_params(), fingerprint=spec.fingerprint)
        except VideoError as exc:
            return self._failed(spec, exc, started)
        info = result.info
        return VideoOutcome(
            spec.video_id, "done", codec=info.codec, width=info.width, height=info.height, fps=info.fps,
            duration_s=info.duration_s, frames_decoded=result.frames_decoded, frames_analysed=result.frames_analysed,
            elapsed_s=time.monotonic() - started, tracks=track_rows(result), files=files, worker=self.name)

    def _failed(self, spec: TaskSpec, exc: VideoError, started: float) -> VideoOutcome:
        log.warning("%s", exc.describe())
        return VideoOutcome(spec.video_id, "failed", error=exc.message, elapsed_s=time.monotonic() - started,
                            worker=self.name)
