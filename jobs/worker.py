"""A worker: engines loaded once, several videos processed at once, outcomes handed back.

The same class runs in-process (`vidx index`, LocalExecutor: `process_many` pulls claims) and inside a
Ray actor (one per GPU, jobs.ray_executor: `submit` feeds calls that arrive one by one into the same
running `process_many`). Either way the videos in flight go through one indexer, so their sampled
frames share the models' batches. It never writes the SQL index: it writes Parquet parts and
thumbnails and returns plain values.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from catalog.outcome import PersonTrackRow, TrackRow, VideoOutcome
from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode.base import Decoder, DecoderWrapper, FrameBatch, open_decoder
from indexer.decode.staged import RemoteSources, StagedDecoder
from indexer.errors import VideoError
from indexer.host_memory import limit_malloc_arenas
from indexer.pipeline import VideoIndexer, VideoResult, VideoTask
from indexer.storage import is_uri
from indexer.write import OutputStore, write_video_outputs
from schemas.config import PIPELINE_VERSION, IndexSettings, SamplingConfig
from schemas.embeddings import embedding_to_bytes
from schemas.ids import parse_face_track_id, parse_person_track_id

log = logging.getLogger(__name__)

FAULTS_ENV = "VIDX_FAULTS"
"""Fault injection for the reliability tests: `crash=NAME;hang=NAME` makes the decoder of a video whose
path contains NAME segfault the worker process (SIGSEGV) or hang, like a broken decoder would."""


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
        TrackRow(track_index=parse_face_track_id(t["track_id"][i])[1], start_s=t["start_s"][i], end_s=t["end_s"][i],
                 n_faces=t["n_faces"][i], embedding=embedding_to_bytes(t["embedding"][i]), quality=t["quality"][i],
                 best_pts_s=t["best_pts_s"][i], thumbnail=t["thumbnail"][i],
                 person_track_index=(parse_person_track_id(t["person_track_id"][i])[1] if t["person_track_id"][i]
                                     else None))
        for i in range(result.tracks.num_rows)
    ]


def person_track_rows(result: VideoResult) -> list[PersonTrackRow]:
    t = result.person_tracks.to_pydict()
    return [
        PersonTrackRow(track_index=parse_person_track_id(t["person_track_id"][i])[1], start_s=t["start_s"][i],
                       end_s=t["end_s"][i], n_detections=t["n_detections"][i], best_pts_s=t["best_pts_s"][i],
                       thumbnail=t["thumbnail"][i])
        for i in range(result.person_tracks.num_rows)
    ]


def parse_faults(text: str | None) -> dict[str, str]:
    """`crash=a.mp4;hang=b.mp4` -> {"crash": "a.mp4", "hang": "b.mp4"}."""
    faults: dict[str, str] = {}
    for part in (text or "").split(";"):
        kind, _, name = part.partition("=")
        if kind.strip() in ("crash", "hang") and name.strip():
            faults[kind.strip()] = name.strip()
    return faults


class FaultyDecoder(DecoderWrapper):
    """A decoder that crashes the process or hangs on chosen videos, in the decoder thread, like a broken
    decoder does; every other video goes to the real decoder it wraps (fault injection for the tests)."""

    def __init__(self, inner: Decoder, faults: dict[str, str]):
        super().__init__(inner)
        self.faults = faults

    def rewrap(self, inner: Decoder) -> FaultyDecoder:
        return FaultyDecoder(inner, self.faults)

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        if (name := self.faults.get("crash")) and name in str(path):
            log.error("fault injection: crashing on %s", path)
            signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)  # in this thread, as a decoder's crash is
        if (name := self.faults.get("hang")) and name in str(path):
            log.error("fault injection: hanging on %s", path)
            while True:
                time.sleep(3600)
        return self.inner.batches(path, sampling, batch_size)


class VideoWorker:
    """Engines loaded (and warmed up) once; up to `in_flight` videos at once through one indexer."""

    def __init__(self, settings: IndexSettings, out_uri: str, *, cache_dir: Path | None = None, name: str | None = None,
                 in_flight: int | None = None, faults: str | None = None):
        limit_malloc_arenas()  # before the runtimes and decoders start their threads
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.store = OutputStore(out_uri)
        models = ModelStore(cache_dir)
        # Warm-up runs each model once here: the first run allocates memory and picks kernels.
        started = time.monotonic()
        self.engines = load_engines(settings.detection, settings.runtime, store=models,
                                    sampling_mode=settings.sampling.mode)
        self.models_ready_s = time.monotonic() - started
        decoder: Decoder = open_decoder(settings.runtime.device, threads=settings.runtime.decode_threads)
        self.decoder_device = decoder.device
        fault_plan = parse_faults(faults if faults is not None else os.environ.get(FAULTS_ENV))
        if fault_plan:
            decoder = FaultyDecoder(decoder, fault_plan)
        self.sources = RemoteSources()
        decoder = StagedDecoder(decoder, self.sources)  # videos in object storage: staged in scratch, then decoded
        self.indexer = VideoIndexer(self.engines, settings, decoder)
        self.in_flight = in_flight or self.indexer.videos_in_flight
        self._progress: dict[int, float] = {}
        self._lock = threading.Lock()
        self._busy = threading.Lock()
        """Held by whichever process_many runs: the indexer runs one at a time."""
        self._incoming: queue.Queue[TaskSpec] = queue.Queue()
        self._waiting: dict[int, Future[VideoOutcome]] = {}
        self._server: threading.Thread | None = None

    @property
    def model_versions(self) -> dict[str, str]:
        return self.engines.model_versions

    def describe(self) -> dict[str, str]:
        return {"worker": self.name, "decoder": self.decoder_device, "in_flight": str(self.in_flight),
                **self.engines.describe(), "models_ready_s": f"{self.models_ready_s:.1f}"}

    def stalled_for(self) -> dict[int, float]:
        """Seconds since each video in progress last moved (a decoded batch), by video id."""
        now = time.monotonic()
        with self._lock:
            return {vid: now - t for vid, t in self._progress.items()}

    def _moved(self, video_id: int) -> None:
        with self._lock:
            self._progress[video_id] = time.monotonic()

    def process(self, spec: TaskSpec) -> VideoOutcome:
        """Index one video (beside any others submitted); a VideoError becomes a failed outcome."""
        return self.submit(spec).result()

    def submit(self, spec: TaskSpec) -> Future[VideoOutcome]:
        """Add a video to the running batch of videos (started on first use); its outcome comes through the
        future. Safe to call from many threads at once (a Ray actor's concurrent calls)."""
        done: Future[VideoOutcome] = Future()
        with self._lock:
            self._waiting[spec.video_id] = done
            if self._server is None:
                self._server = threading.Thread(target=self._serve, name="vidx-worker-feed", daemon=True)
                self._server.start()
        self._incoming.put(spec)
        return done

    def _serve(self) -> None:
        """Run process_many on what `submit` feeds it, for as long as the process lives."""

        def feed() -> Iterator[TaskSpec | None]:
            while True:
                try:
                    yield self._incoming.get_nowait()
                except queue.Empty:
                    yield None

        try:
            for spec, outcome in self.process_many(feed(), in_flight=self.in_flight):
                with self._lock:
                    done = self._waiting.pop(spec.video_id, None)
                if done is not None:  # None: its caller was already failed by an earlier loop's failure
                    done.set_result(outcome)
        except BaseException as exc:  # a bug or an engine failure: every waiting caller gets it
            log.exception("worker loop failed")
            with self._lock:
                waiting, self._waiting = self._waiting, {}
                self._server = None
                while not self._incoming.empty():
                    self._incoming.get_nowait()
            for done in waiting.values():
                done.set_exception(exc)

    def process_many(self, specs: Iterable[TaskSpec | None], in_flight: int | None = None,
                     on_progress: Callable[[TaskSpec, float], None] | None = None
                     ) -> Iterator[tuple[TaskSpec, VideoOutcome]]:
        """Index videos `in_flight` at once through one indexer, so that their sampled frames share the
        models' batches (on a GPU: several NVDEC sessions busy, full batches); outcomes as videos finish.

        `on_progress(spec, pts_s)` hears how far into each video the analysis got (after every step).
        `specs` is read lazily, one spec each time a video finishes: a claim from the job queue happens
        only when there is room for the video. It may yield None for "nothing right now" (see
        VideoIndexer.index_many).
        """
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this worker is already indexing (one process_many at a time)")
        started: dict[int, tuple[TaskSpec, float]] = {}

        def tasks() -> Iterator[VideoTask | None]:
            for spec in specs:
                if spec is None:
                    yield None
                    continue
                started[spec.video_id] = (spec, time.monotonic())
                self._moved(spec.video_id)
                path = (self.sources.local_path(spec.path, spec.video_id, spec.fingerprint) if is_uri(spec.path)
                        else Path(spec.path))
                yield VideoTask(path, spec.video_id, spec.run_key)

        def moved(task: VideoTask, _: int, pts_s: float) -> None:
            self._moved(task.video_id)
            if on_progress is not None and task.video_id in started:
                on_progress(started[task.video_id][0], pts_s)

        try:
            for task, result in self.indexer.index_many(tasks(), in_flight=in_flight or self.in_flight,
                                                        on_progress=moved):
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
            self._busy.release()

    def error_outcome(self, spec: TaskSpec, exc: BaseException) -> VideoOutcome:
        """A video failed for a reason that is not its own (the output store, a bug)."""
        return VideoOutcome(spec.video_id, "failed", error=f"worker error: {type(exc).__name__}: {exc}",
                            worker=self.name)

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
            faces=result.faces.num_rows, persons=result.persons.num_rows,
            elapsed_s=time.monotonic() - started, tracks=track_rows(result),
            person_tracks=person_track_rows(result), files=files, worker=self.name)

    def _failed(self, spec: TaskSpec, exc: VideoError, started: float) -> VideoOutcome:
        log.warning("%s", exc.describe())
        return VideoOutcome(spec.video_id, "failed", error=exc.message, elapsed_s=time.monotonic() - started,
                            worker=self.name)
