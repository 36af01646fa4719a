"""The per-video pipeline: decode -> sample -> detect -> align -> embed -> track -> tables.

Each video in flight decodes in a thread of its own (FFmpeg and NVDEC release the GIL) while the models
run on the batches already produced, so decode overlaps inference even on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from engines.arrays import Array, Region, regions_to_host
from engines.detectors import Detections, FaceDetector, PersonDetector
from engines.loader import Engines
from engines.runtime.base import cpu_runs_at_once
from engines.streams import STREAMS
from indexer.decode.base import Decoder, FrameBatch, VideoInfo
from indexer.errors import VideoError
from indexer.tracking import FaceTracker, PersonTrack, PersonTracker, Track, face_quality, person_of_faces
from schemas.config import NVDEC_VIDEOS_IN_FLIGHT, IndexSettings
from schemas.ids import face_track_id, person_track_id
from schemas.tables import FACES, PERSON_TRACKS, PERSONS, TRACKS

log = logging.getLogger(__name__)

PREFETCH_HANDOFFS = 4
"""Hand-offs per video in flight that may wait in the queue for the models (frames held on the device)."""
DECODE_HANDOFF = 8
"""Sampled frames a decoder thread hands over at once (at most a step's worth), unless
RuntimeConfig.decode_handoff says otherwise. Steps are gathered across
videos, so a hand-off need not fill one: small hand-offs let the models start on a video's first frames
instead of waiting until each decoder has a whole step (at 2 fps a step of 32 frames is 16 s of video,
most of a short clip)."""
STAGES = ("wait_for_frames", "wait_for_models", "detect_faces", "detect_persons", "align", "embed", "track")
STEPS_IN_FLIGHT_GPU = 2
"""Analysis steps under way at once when the models run on a GPU: while one step's models run, the next
step's host work (level batches, anchor decoding, NMS, alignment maths) goes on, so the GPU does not wait
for Python. On a CPU, engines.runtime.base.cpu_runs_at_once() steps, each on its share of the cores."""
STEPS_QUEUED_GPU = 0
"""Steps submitted on a GPU beyond those under way, each waiting for a model thread: when one step ends the next
starts at once, also while the calling thread tracks the oldest (with none queued, one step runs then). 0 by
default; `QUEUED=0,1 python3 tools/gpu_pipeline_rows.py ...` compares."""
THUMBNAIL_QUALITY = 88
PERSON_THUMBNAIL_HEIGHT = 256
"""Person thumbnails are the best sighting's box, scaled down to at most this many pixels high."""
FEED_POLL_S = 0.05
"""How often index_many asks a feed that said "no task right now" again, while videos are in flight."""
GATHER_POLL_S = 0.002
"""How often index_many looks at the models while frames wait for them or a step is being analysed."""
PEOPLE_WAIT_S = 600.0
"""Longest a step waits for the people of an earlier step (seconds of one step's models at most)."""
_NO_MORE = object()


@dataclass
class VideoResult:
    """Everything one video produced, ready to be written."""

    info: VideoInfo
    faces: pa.Table
    persons: pa.Table
    tracks: pa.Table
    person_tracks: pa.Table
    thumbnails: dict[str, bytes]
    """JPEG bytes of each face track's best face and each person track's best sighting, by public track id."""
    frames_decoded: int
    frames_in_video: int
    """Frames the video holds (demuxed), whether decoded or skipped as not needed by the sampling."""
    frames_analysed: int
    decode_s: float
    total_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "video": self.info.path, "frames_decoded": self.frames_decoded,
            "frames_in_video": self.frames_in_video, "frames_analysed": self.frames_analysed,
            "faces": self.faces.num_rows, "persons": self.persons.num_rows, "tracks": self.tracks.num_rows,
            "person_tracks": self.person_tracks.num_rows,
            "seconds": round(self.total_s, 3),
        }


@dataclass
class _Rows:
    pts: list[float] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pts)

    def add(self, pts: float, index: int, box: np.ndarray, score: float, kps: np.ndarray | None = None,
            **extra: Any) -> int:
        self.pts.append(pts)
        self.index.append(index)
        self.boxes.append(box)
        self.scores.append(score)
        if kps is not None:
            self.keypoints.append(kps.reshape(-1))
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)
        return len(self.pts) - 1


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put item, waiting while the queue is full; False when asked to stop first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def jpeg(chip: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chip)).save(buf, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()


@dataclass
class PeriodicSchedule:
    """The samples of one video that a periodic step runs on (guided search's whole-frame searches, the person
    detector): its first sample, then the first sample `every_s` or more after the last one it ran on
    (samples arrive in timestamp order; a timestamp going back, as in a damaged stream, starts again)."""

    every_s: float
    last_s: float | None = None

    def due(self, pts_s: float) -> bool:
        """Whether the step runs on the sample at pts_s (and, if so, it is the last one it ran on)."""
        if self.last_s is None or pts_s - self.last_s >= self.every_s - 1e-6 or pts_s < self.last_s:
            self.last_s = pts_s
            return True
        return False


@dataclass(frozen=True)
class VideoTask:
    """One video to index: where it is and the ids its rows carry."""

    path: Path
    video_id: int
    run_key: str


@dataclass
class _VideoState:
    """What the pipeline accumulates for one video in flight."""

    task: VideoTask
    decoder: Decoder
    tracker: FaceTracker
    person_tracker: PersonTracker
    started: float
    full_searches: PeriodicSchedule
    """Which of the video's samples search their whole frame for the smallest faces (guided face search)."""
    person_samples: PeriodicSchedule
    """Which of the video's samples the person detector runs on (DetectionConfig.persons_every_s)."""
    last_people: _People | None = None
    """The people of the video's latest sample gathered that runs the person detector."""
    faces: _Rows = field(default_factory=_Rows)
    persons: _Rows = field(default_factory=_Rows)
    best_chips: dict[int, np.ndarray] = field(default_factory=dict)
    """The aligned chip of each face track's best face, by track number."""
    best_crops: dict[int, np.ndarray] = field(default_factory=dict)
    """The thumbnail of each person track's best sighting, by track number, once the track has ended."""
    open_crops: dict[int, np.ndarray] = field(default_factory=dict)
    """The box of the best sighting so far of each track still open, cut from its frame at full size: it becomes a
    thumbnail once the track ends (while a track lasts its best sighting can change at every sample)."""
    info: VideoInfo | None = None

    def close_crops(self, now_s: float | None = None) -> None:
        """Thumbnails of the open crops whose tracks have ended by `now_s` (None: all of them); a track too short to
        be kept (a passing false box) gets none."""
        tracks, config = self.person_tracker.tracks, self.person_tracker.config
        for t in [t for t in self.open_crops if now_s is None or now_s - tracks[t].end_s > config.max_gap_s]:
            crop = self.open_crops.pop(t)
            if tracks[t].n_detections >= config.min_detections:
                self.best_crops[t] = _thumbnail(crop)


@dataclass
class _Frame:
    """One sampled frame on its way through a (possibly cross-video) analysis step."""

    video: _VideoState
    image: Array
    pts_s: float
    index: int
    full_search: bool
    """Whether the finest face level searches the whole frame (else only around small people's heads and the
    faces the coarser levels found: guided face search)."""
    find_persons: bool
    """Whether the person detector runs on this frame (else its video's person tracks stand in)."""
    people: _People
    """The people this frame's guided face search looks around: found in this frame, or (where the person
    detector does not run on it) in the latest earlier frame of its video that it ran on."""


class _People:
    """The person boxes found in one frame, handed from the step that finds them to the frames after it that
    the person detector skips (possibly in the next step, analysed in another thread): the same boxes
    whichever thread gets there first, so results do not depend on timing."""

    def __init__(self) -> None:
        self.boxes = np.zeros((0, 4), np.float32)
        self._ready = threading.Event()

    def found(self, boxes: np.ndarray) -> None:
        self.boxes = boxes
        self._ready.set()

    def release(self) -> None:
        """Frees those waiting, with no boxes if none were found (the step that was to find them failed)."""
        self._ready.set()

    def wait(self) -> np.ndarray:
        if not self._ready.wait(PEOPLE_WAIT_S):  # a step is always released, found or failed: this is a bug
            raise RuntimeError(f"the people of an earlier step did not come in {PEOPLE_WAIT_S:.0f} s")
        return self.boxes


@dataclass
class _Inferred:
    """What the models said about one step's frames: the GPU half of a step (tracking is the host half)."""

    faces: list[Detections]
    persons: list[Detections | None] | None
    """Per frame, the people found (None where the person detector did not run); None without people."""
    embeddable: list[tuple[int, int]]
    """(frame, detection) of each face big enough to embed, in the order of the arrays below."""
    sharpness: np.ndarray
    embeddings: np.ndarray
    embedded: np.ndarray
    """Which of `embeddable` were sharp enough to embed."""
    chips: Array | None


ProgressFn = Callable[[VideoTask, int, float], None]
"""Called after each analysis step with the task, the frames just analysed and the last timestamp."""


class VideoIndexer:
    """Indexes videos with engines loaded once; several videos at once share the engines' batches.

    Each video in flight has its own decoder in its own thread (NVDEC: one decoder never exceeds one
    of the GPU's decode engines, so several run side by side); the calling thread gathers sampled
    frames from all of them into steps of `frame_batch` frames. A step's models run in a small pool
    (on a GPU two steps overlap, each on its own CUDA stream); the calling thread then tracks the
    step's faces, steps in the order they were gathered.
    """

    def __init__(self, engines: Engines, settings: IndexSettings, decoder: Decoder):
        self.engines = engines
        self.settings = settings
        self.decoder = decoder
        """The template: each video gets a fresh copy of it (decoders keep per-video state)."""
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        """Seconds in each stage since this indexer was made, summed over the threads that run it."""
        self._clock_lock = threading.Lock()

    @property
    def models_on_gpu(self) -> bool:
        return self.engines.faces.session.device == "cuda"

    @property
    def videos_in_flight(self) -> int:
        n = self.settings.runtime.videos_in_flight
        return n if n > 0 else (NVDEC_VIDEOS_IN_FLIGHT if self.decoder.device == "cuda" else 1)

    @property
    def steps_in_flight(self) -> int:
        """Analysis steps under way at once (STEPS_IN_FLIGHT_GPU; on a CPU, cpu_runs_at_once())."""
        return STEPS_IN_FLIGHT_GPU if self.models_on_gpu else cpu_runs_at_once()

    @property
    def steps_queued(self) -> int:
        """Steps submitted beyond those under way (STEPS_QUEUED_GPU; none on a CPU)."""
        return STEPS_QUEUED_GPU if self.models_on_gpu else 0

    @property
    def frame_batch(self) -> int:
        return self.settings.runtime.frame_batch or (self.engines.faces.batch_size if self.models_on_gpu else 8)

    def index(self, path: Path, *, video_id: int, run_key: str,
              on_progress: Callable[[int, float], None] | None = None) -> VideoResult:
        """Index one video. VideoError for a bad video; results only when the whole video succeeded."""
        progress: ProgressFn | None = (lambda _t, n, t: on_progress(n, t)) if on_progress else None
        for _, outcome in self.index_many([VideoTask(path, video_id, run_key)], on_progress=progress):
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        raise AssertionError("index_many yielded nothing")

    def index_many(self, tasks: Iterable[VideoTask | None], *, on_progress: ProgressFn | None = None,
                   in_flight: int | None = None) -> Iterator[tuple[VideoTask, VideoResult | VideoError]]:
        """Index many videos, `in_flight` at once; yields each (task, result or VideoError) as it finishes.

        `tasks` is read only when there is room for another video. It may yield None for "no task right
        now" (a feed that others fill, like a Ray actor's incoming calls): the videos in flight go on and
        it is asked again FEED_POLL_S later. The run ends when `tasks` is exhausted and every video has
        finished.

        A VideoError ends only its own video. Any other exception stops everything and propagates.
        """
        limit = in_flight or self.videos_in_flight
        pending_tasks = iter(tasks)
        exhausted = False
        idle_until = 0.0
        """After the feed said "nothing now", it is not asked again before this time."""
        messages: queue.Queue[tuple[str, _VideoState, Any]] = queue.Queue(maxsize=PREFETCH_HANDOFFS * max(limit, 2))
        stop = threading.Event()
        live: dict[int, _VideoState] = {}
        ended: dict[int, VideoError | None] = {}
        """Videos whose decoder has finished (or failed), by id of their state: they finish once every frame
        of theirs is tracked. They hold no decoding place: the next video starts decoding at once, within
        room()'s bound on the videos held in all."""
        step = self.frame_batch
        overlap = self.steps_in_flight
        pool = ThreadPoolExecutor(overlap, thread_name_prefix="vidx-models") if overlap > 1 else None
        submitted = overlap + (self.steps_queued if pool is not None else 0)
        steps: deque[tuple[list[_Frame], Future[_Inferred]]] = deque()
        gathered: list[_Frame] = []

        def start_next() -> bool:
            """Start the next video if there is one now."""
            nonlocal exhausted, idle_until
            if exhausted or time.monotonic() < idle_until:
                return False
            task = next(pending_tasks, _NO_MORE)
            if task is _NO_MORE:
                exhausted = True
                return False
            if not isinstance(task, VideoTask):  # None: nothing to start right now
                idle_until = time.monotonic() + FEED_POLL_S
                return False
            det = self.settings.detection
            state = _VideoState(task, copy.copy(self.decoder), FaceTracker(self.settings.tracking),
                                PersonTracker(self.settings.person_tracking), time.monotonic(),
                                PeriodicSchedule(det.full_search_every_s),
                                PeriodicSchedule(det.persons_every_s if self.settings.persons_scheduled() else 0.0))
            live[id(state)] = state
            threading.Thread(target=self._decode, args=(state, messages, stop), daemon=True,
                             name=f"vidx-decode-{task.video_id}").start()
            return True

        def room() -> bool:
            """Whether another video may start: fewer than `limit` decoding, and fewer than twice `limit` held in
            all, decoded ones waiting for the models included (with steps in flight a worker would otherwise claim
            short videos far ahead of their analysis, which other workers could have taken)."""
            return len(live) - len(ended) < limit and len(live) < 2 * limit

        def models_busy() -> bool:
            return any(not future.done() for _, future in steps)

        def submit(n: int) -> None:
            """The first n gathered frames become a step (its models start now, in the pool on a GPU)."""
            frames = gathered[:n]
            del gathered[:n]
            if not frames:
                return
            if pool is None:
                done: Future[_Inferred] = Future()
                done.set_result(self._infer(frames))
                steps.append((frames, done))
            else:
                steps.append((frames, pool.submit(self._infer, frames)))
            while len(steps) >= submitted:
                record_oldest()

        def submit_ready() -> None:
            """Whole steps go at once. A partial step goes only when the models would otherwise wait: on a GPU
            every step costs a whole batch (inputs are padded to a fixed shape), so the frames at the end of
            one video wait for other videos' frames while the models are busy."""
            while len(gathered) >= step:
                submit(step)
            if gathered and messages.empty() and not models_busy():
                submit(len(gathered))

        def record_oldest() -> None:
            frames, future = steps.popleft()
            t0 = time.perf_counter()
            inferred = future.result()
            self.timings["wait_for_models"] += time.perf_counter() - t0
            self._record(frames, inferred, on_progress)

        def unfinished(state: _VideoState) -> bool:
            """Whether frames of this video are still to be analysed or tracked."""
            return (any(fr.video is state for fr in gathered)
                    or any(fr.video is state for frames, _ in steps for fr in frames))

        try:
            while True:
                # Claims happen here, after the caller has taken the last result: only when there is room.
                while room() and start_next():
                    pass
                while steps and steps[0][1].done():
                    record_oldest()
                for key, error in list(ended.items()):
                    state = live[key]
                    if not unfinished(state):
                        del ended[key], live[key]
                        yield state.task, (error if error is not None else self._finish(state))
                if not live:
                    if exhausted:
                        break
                    time.sleep(max(0.0, idle_until - time.monotonic()))  # nothing to do until the feed has a task
                    continue
                if gathered or steps:  # frames waiting for the models, or a step to track when it is done
                    timeout: float | None = GATHER_POLL_S
                elif exhausted or not room():
                    timeout = None
                else:  # with room for a video, wake up now and then to ask the feed for one
                    timeout = FEED_POLL_S
                t0 = time.perf_counter()
                try:
                    kind, state, payload = messages.get(timeout=timeout)
                except queue.Empty:
                    submit_ready()
                    continue
                finally:
                    self.timings["wait_for_frames"] += time.perf_counter() - t0
                if kind == "frames":
                    gathered.extend(_frames_of(state, payload))
                    state.info = payload.video
                elif kind == "error":  # the video fails as a whole: its frames not yet analysed are dropped
                    gathered[:] = [fr for fr in gathered if fr.video is not state]
                    ended[id(state)] = payload
                else:
                    ended[id(state)] = None
                submit_ready()
        finally:
            stop.set()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _models_stream(self) -> Any:
        """On a GPU the models' side of a step runs on a non-blocking CUDA stream of its own (lent by the
        process's pool, and synchronised as it goes back): on CUDA's legacy default stream every kernel and
        copy would also wait for the decoders' work on the device."""
        return STREAMS.lend() if self.models_on_gpu else contextlib.nullcontext()

    def _decode(self, state: _VideoState, messages: queue.Queue[Any], stop: threading.Event) -> None:
        """A decoder thread: batches of sampled frames of one video, then "end" (or "error")."""
        task = state.task
        try:
            size = min(self.frame_batch, self.settings.runtime.decode_handoff or DECODE_HANDOFF)
            for batch in state.decoder.batches(task.path, self.settings.sampling, size):
                if not _put(messages, ("frames", state, batch), stop):
                    return
            _put(messages, ("end", state, None), stop)
        except VideoError as exc:
            _put(messages, ("error", state, exc), stop)
        except Exception as exc:  # a decoder bug must not hang the consumer: fail this video, say why
            log.exception("%s: decoder failed", task.path)
            _put(messages, ("error", state, VideoError(f"decoder failed: {exc}", path=task.path)), stop)

    def _finish(self, state: _VideoState) -> VideoResult:
        task, det = state.task, self.settings.detection
        stats = state.decoder.stats
        info = state.info or state.decoder.probe(task.path)
        video = _VideoKey(info.path, task.video_id, task.run_key)
        face_tracks = [t for t in state.tracker.tracks if t.n_embedded > 0]
        person_tracks = state.person_tracker.kept() if det.detect_persons else []
        person_of_track = _person_of_face_tracks(state.faces, {t.track_index for t in person_tracks})
        state.close_crops()
        thumbnails = {face_track_id(task.video_id, t.track_id): jpeg(state.best_chips[t.track_id])
                      for t in face_tracks if t.track_id in state.best_chips}
        thumbnails.update({person_track_id(task.video_id, t.track_index): jpeg(state.best_crops[t.track_index])
                           for t in person_tracks if t.track_index in state.best_crops})
        return VideoResult(
            info=info,
            faces=_faces_table(state.faces, video, {t.track_id for t in face_tracks}),
            persons=(_persons_table(state.persons, video, {t.track_index for t in person_tracks})
                     if det.detect_persons else PERSONS.empty_table()),
            tracks=_tracks_table(face_tracks, state.faces, video, person_of_track),
            person_tracks=_person_tracks_table(person_tracks, state.persons, video, person_of_track),
            thumbnails=thumbnails,
            frames_decoded=stats.frames_decoded,
            frames_in_video=stats.frames_in_video,
            frames_analysed=stats.frames_sampled,
            decode_s=stats.seconds,
            total_s=time.monotonic() - state.started,
        )

    def _infer(self, batch: list[_Frame]) -> _Inferred:
        """Detect faces and people in frames from any videos, align and embed the faces (no video state)."""
        try:
            return self._infer_step(batch)
        finally:  # whatever happened, no later step waits for this one's people
            for fr in batch:
                if fr.find_persons:
                    fr.people.release()

    def _infer_step(self, batch: list[_Frame]) -> _Inferred:
        """A step's models. The person detector's runs and the face detector's whole-frame levels are queued
        before either is waited for: on a GPU the face levels run while the host suppresses the people and works
        out the head regions that guided face search needs (which may wait for an earlier step's people)."""
        det = self.settings.detection
        clock = _Clock(self.timings, self._clock_lock)
        with self._models_stream():
            frames: list[Array] = [fr.image for fr in batch]
            people = None
            if self.engines.persons is not None and det.detect_persons:
                people = self._queue_persons(batch, self.engines.persons)
                clock.lap("detect_persons")
            faces_engine = self.engines.faces
            detecting_faces = faces_engine.queue_detect(frames)
            clock.lap("detect_faces")
            persons = people() if people is not None else None
            clock.lap("detect_persons")
            regions = None  # guided face search: the finest level looks at people's heads between full searches
            if persons is not None and isinstance(faces_engine, FaceDetector) and faces_engine.fine_tiles:
                regions = [None if fr.full_search else
                           faces_engine.head_regions(fr.people.wait(), int(fr.image.shape[0]), int(fr.image.shape[1]))
                           for fr in batch]
            faces = detecting_faces(regions)
            clock.lap("detect_faces")
            embeddable = [(f, k) for f, d in enumerate(faces) for k in range(len(d))
                          if d.boxes[k, 2] - d.boxes[k, 0] >= det.min_embed_px]
            sharp = np.zeros(0, np.float32)
            embeddings = np.zeros((0, 128), np.float32)
            ok_mask = np.zeros(0, bool)
            chips: Array | None = None
            if embeddable:
                kps = np.stack([faces[f].keypoints[k] for f, k in embeddable])
                chips = self.engines.embedder.chips(frames, [f for f, _ in embeddable], kps)
                clock.lap("align")
                sharp, ok_mask, embeddings = self.engines.embedder.embed_sharp(chips, det.min_sharpness)
                clock.lap("embed")
        # the step's stream is synchronised as it goes back: the chips are complete before the tracking thread
        # copies any
        return _Inferred(faces, persons, embeddable, sharp, embeddings, ok_mask, chips)

    @staticmethod
    def _queue_persons(batch: list[_Frame], detector: PersonDetector) -> Callable[[], list[Detections | None]]:
        """The person detector's runs on the step's frames that run it, queued; the function returned gives the
        people of each frame (None for the frames it skips) and hands them on to the frames after them that it
        skips."""
        searched = [fr for fr in batch if fr.find_persons]
        # with every-frame sampling they can be a few of the step's frames: on a GPU they are padded to a smaller
        # batch than the step's
        detecting = detector.queue_detect([fr.image for fr in searched], small_batches=len(searched) < len(batch))

        def found() -> list[Detections | None]:
            people = detecting()
            for fr, dets in zip(searched, people, strict=True):
                fr.people.found(dets.boxes)
            in_order = iter(people)
            return [next(in_order) if fr.find_persons else None for fr in batch]

        return found

    def _record(self, batch: list[_Frame], inferred: _Inferred, on_progress: ProgressFn | None) -> None:
        """Rows, tracks and best chips of a step's frames, into their videos' state (calling thread only)."""
        clock = _Clock(self.timings, self._clock_lock)
        sharp, embeddings, ok_mask, chips = inferred.sharpness, inferred.embeddings, inferred.embedded, inferred.chips
        lookup = {fk: i for i, fk in enumerate(inferred.embeddable)}
        # The step's last best sighting of each track, copied to the host once after the step (a track's best
        # can change at every frame: copying each one, a device sync apiece, cost the GPU path's calling thread
        # more than the tracking itself).
        best_chip: dict[tuple[int, int], tuple[_VideoState, int, int]] = {}
        best_crop: dict[tuple[int, int], tuple[_VideoState, int, Array, np.ndarray]] = {}
        with self._models_stream():
            for f, (fr, dets) in enumerate(zip(batch, inferred.faces, strict=True)):
                video = fr.video
                found = inferred.persons[f] if inferred.persons is not None else None
                # people: boxes and person tracks; a frame the person detector skipped takes them carried on
                carried = (video.person_tracker.carried(fr.pts_s) if inferred.persons is not None and found is None
                           else None)
                person_boxes = found.boxes if found is not None else carried[0] if carried is not None else None
                owner = (person_of_faces(dets.boxes, person_boxes) if person_boxes is not None
                         else np.full(len(dets), -1, np.int64))
                rows, embs, chip_of = [], [], []
                for k in range(len(dets)):
                    i = lookup.get((f, k))
                    emb = embeddings[i] if i is not None and ok_mask[i] else None
                    s = float(sharp[i]) if i is not None else None
                    rows.append(video.faces.add(fr.pts_s, fr.index, dets.boxes[k], float(dets.scores[k]),
                                                dets.keypoints[k], size_px=float(dets.boxes[k, 2] - dets.boxes[k, 0]),
                                                sharpness=s, embedding=emb, track_id=None, person_track=None))
                    embs.append(emb)
                    chip_of.append(i)
                ids: list[int] = []
                if rows:
                    sharp_f = np.asarray([float(sharp[i]) if i is not None else 0.0 for i in chip_of], np.float32)
                    quality = face_quality(dets.boxes, dets.keypoints, sharp_f, dets.scores.astype(np.float32))
                    ids = video.tracker.update(fr.pts_s, rows, dets.boxes, embs, quality)
                for row, tid, i in zip(rows, ids, chip_of, strict=True):
                    video.faces.extra["track_id"][row] = tid if tid >= 0 else None
                    if (tid >= 0 and video.tracker.tracks[tid].best_face == row and chips is not None
                            and i is not None):
                        best_chip[id(video), tid] = (video, tid, i)
                # people after faces: the face on each person box helps link it to its track
                person_tracks = carried[1] if carried is not None else None
                if found is not None:
                    person_tracks = _track_persons(fr, found, best_crop,
                                                   _face_of_boxes(dets.boxes, owner, ids, len(found)))
                if person_tracks is not None:
                    for row, o in zip(rows, owner.tolist(), strict=True):
                        if o >= 0:
                            video.faces.extra["person_track"][row] = int(person_tracks[o])
            # the step's best chips and person crops come to the host together, with one wait
            picked = list(best_chip.values())  # only where the step has chips
            crops = list(best_crop.values())
            chip_regions = [_whole(chips[i]) for _, _, i in picked] if chips is not None else []
            copies = regions_to_host(chip_regions + [_crop_region(image, box) for _, _, image, box in crops])
            for (video, tid, _), chip in zip(picked, copies[:len(picked)], strict=True):
                video.best_chips[tid] = chip
            for (video, track, _, _), crop in zip(crops, copies[len(picked):], strict=True):
                video.open_crops[track] = crop
            for fr in {id(fr.video): fr for fr in batch}.values():  # each video's last frame of the step
                fr.video.close_crops(fr.pts_s)
        clock.lap("track")
        if on_progress:
            by_video: dict[int, list[_Frame]] = {}
            for fr in batch:
                by_video.setdefault(id(fr.video), []).append(fr)
            for group in by_video.values():
                on_progress(group[0].video.task, len(group), group[-1].pts_s)


def _face_of_boxes(face_boxes: np.ndarray, owner: np.ndarray, face_tracks: list[int], n_boxes: int) -> list[int]:
    """For each of a frame's person boxes, the face track of the largest face on it (-1: none)."""
    out = [-1] * n_boxes
    widths = (face_boxes[:, 2] - face_boxes[:, 0]).tolist() if len(face_boxes) else []
    for k in sorted(range(len(face_tracks)), key=lambda k: widths[k]):  # the largest face is written last
        if owner[k] >= 0 and face_tracks[k] >= 0:
            out[int(owner[k])] = face_tracks[k]
    return out


def _track_persons(fr: _Frame, dets: Detections,
                   best_crop: dict[tuple[int, int], tuple[_VideoState, int, Array, np.ndarray]],
                   faces: list[int]) -> np.ndarray:
    """Rows and person tracks of one frame's person boxes (`faces`: the face track on each box, or -1); returns
    each box's track number. A track whose best sighting is now in this frame gets (video, track, frame, box)
    in `best_crop`."""
    video = fr.video
    rows = [video.persons.add(fr.pts_s, fr.index, dets.boxes[k], float(dets.scores[k])) for k in range(len(dets))]
    tracks = np.asarray(video.person_tracker.update(fr.pts_s, rows, dets.boxes, dets.scores, faces), np.int64)
    for row, t in zip(rows, tracks, strict=True):
        video.persons.extra.setdefault("track", []).append(int(t))
        if video.person_tracker.tracks[t].best_row == row:
            best_crop[id(video), int(t)] = (video, int(t), fr.image, video.persons.boxes[row])
    return tracks


def _frames_of(state: _VideoState, batch: FrameBatch) -> Iterator[_Frame]:
    """A decoder's hand-off as frames for the models, each told whether it searches its whole frame for the
    smallest faces and which people (found in it, or before it) guided search looks around."""
    for i in range(len(batch)):
        pts = float(batch.pts_s[i])
        people = state.last_people
        find_persons = state.person_samples.due(pts) or people is None
        if people is None or find_persons:
            people = state.last_people = _People()
        yield _Frame(state, batch.frames[i], pts, int(batch.frame_index[i]), state.full_searches.due(pts),
                     find_persons, people)


def _whole(image: Array) -> Region:
    return image, 0, int(image.shape[0]), 0, int(image.shape[1])


def _crop_region(image: Array, box: np.ndarray) -> Region:
    """A box of a frame (on the device or the host) as a region of it, at least one pixel, inside the frame."""
    h, w = int(image.shape[0]), int(image.shape[1])
    x0, y0 = min(w - 1, max(0, int(box[0]))), min(h - 1, max(0, int(box[1])))
    x1, y1 = min(w, max(x0 + 1, int(np.ceil(box[2])))), min(h, max(y0 + 1, int(np.ceil(box[3]))))
    return image, y0, y1, x0, x1


def _thumbnail(crop: np.ndarray) -> np.ndarray:
    """A person crop at most PERSON_THUMBNAIL_HEIGHT high."""
    if crop.shape[0] > PERSON_THUMBNAIL_HEIGHT:
        scale = PERSON_THUMBNAIL_HEIGHT / crop.shape[0]
        crop = np.asarray(Image.fromarray(crop).resize(
            (max(1, round(crop.shape[1] * scale)), PERSON_THUMBNAIL_HEIGHT), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(crop)


class _Clock:
    """Adds the time since the last lap to a named total (totals shared by threads, hence the lock)."""

    def __init__(self, totals: dict[str, float], lock: threading.Lock):
        self.totals = totals
        self.lock = lock
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        with self.lock:
            self.totals[name] += now - self.last
        self.last = now


@dataclass(frozen=True)
class _VideoKey:
    """What every row of a video's tables carries."""

    path: str
    video_id: int
    run_key: str

    def columns(self, n: int) -> list[pa.Array]:
        return [pa.array([self.path] * n, pa.string()), pa.array(np.full(n, self.video_id, np.int64)),
                pa.array([self.run_key] * n, pa.string())]


def _fixed_list(rows: list[np.ndarray], width: int) -> pa.Array:
    flat = np.asarray(rows, np.float32).reshape(-1) if rows else np.zeros(0, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)


def _person_of_face_tracks(faces: _Rows, kept: set[int]) -> dict[int, int]:
    """The person track of each face track: the one most of its faces were inside (kept person tracks only)."""
    votes: dict[int, dict[int, int]] = {}
    for track, person in zip(faces.extra.get("track_id", []), faces.extra.get("person_track", []), strict=True):
        if track is not None and person is not None and person in kept:
            counts = votes.setdefault(track, {})
            counts[person] = counts.get(person, 0) + 1
    return {track: max(counts, key=lambda p: (counts[p], -p)) for track, counts in votes.items()}


def _faces_table(rows: _Rows, video: _VideoKey, tracks: set[int]) -> pa.Table:
    n = len(rows)
    if n == 0:
        return FACES.empty_table()
    emb = rows.extra["embedding"]
    emb_flat = np.stack([e if e is not None else np.zeros(128, np.float32) for e in emb]).reshape(-1)
    emb_arr = pa.FixedSizeListArray.from_arrays(pa.array(emb_flat, pa.float32()), 128,
                                                mask=pa.array([e is None for e in emb]))
    track_ids = [face_track_id(video.video_id, t) if t is not None and t in tracks else None
                 for t in rows.extra["track_id"]]
    return pa.Table.from_arrays([
        *video.columns(n), pa.array(rows.pts, pa.float64()), pa.array(rows.index, pa.int64()),
        _fixed_list(rows.boxes, 4), pa.array(rows.scores, pa.float32()), _fixed_list(rows.keypoints, 12),
        pa.array(rows.extra["size_px"], pa.float32()), pa.array(rows.extra["sharpness"], pa.float32()),
        emb_arr, pa.array(track_ids, pa.string()),
    ], schema=FACES)


def _persons_table(rows: _Rows, video: _VideoKey, tracks: set[int]) -> pa.Table:
    n = len(rows)
    if n == 0:
        return PERSONS.empty_table()
    track_ids = [person_track_id(video.video_id, t) if t in tracks else None for t in rows.extra["track"]]
    return pa.Table.from_arrays([
        *video.columns(n), pa.array(rows.pts, pa.float64()), pa.array(rows.index, pa.int64()),
        _fixed_list(rows.boxes, 4), pa.array(rows.scores, pa.float32()), pa.array(track_ids, pa.string()),
    ], schema=PERSONS)


def _tracks_table(tracks: list[Track], faces: _Rows, video: _VideoKey, person_of: dict[int, int]) -> pa.Table:
    if not tracks:
        return TRACKS.empty_table()
    n, vid = len(tracks), video.video_id
    return pa.Table.from_arrays([
        *video.columns(n),
        pa.array([face_track_id(vid, t.track_id) for t in tracks], pa.string()),
        pa.array([t.start_s for t in tracks], pa.float64()), pa.array([t.end_s for t in tracks], pa.float64()),
        pa.array([t.n_faces for t in tracks], pa.int32()),
        _fixed_list([t.embedding for t in tracks], 128),
        pa.array([faces.pts[t.best_face] for t in tracks], pa.float64()),
        _fixed_list([faces.boxes[t.best_face] for t in tracks], 4),
        pa.array([t.best_quality for t in tracks], pa.float32()),
        pa.array([thumbnail_path(vid, video.run_key, face_track_id(vid, t.track_id)) for t in tracks], pa.string()),
        pa.array([person_track_id(vid, person_of[t.track_id]) if t.track_id in person_of else None
                  for t in tracks], pa.string()),
    ], schema=TRACKS)


def _person_tracks_table(tracks: list[PersonTrack], persons: _Rows, video: _VideoKey,
                         person_of: dict[int, int]) -> pa.Table:
    if not tracks:
        return PERSON_TRACKS.empty_table()
    n, vid = len(tracks), video.video_id
    faces_of: dict[int, list[str]] = {}
    for face_track, person in sorted(person_of.items()):
        faces_of.setdefault(person, []).append(face_track_id(vid, face_track))
    return pa.Table.from_arrays([
        *video.columns(n),
        pa.array([person_track_id(vid, t.track_index) for t in tracks], pa.string()),
        pa.array([t.start_s for t in tracks], pa.float64()), pa.array([t.end_s for t in tracks], pa.float64()),
        pa.array([t.n_detections for t in tracks], pa.int32()),
        pa.array([persons.pts[t.best_row] for t in tracks], pa.float64()),
        _fixed_list([persons.boxes[t.best_row] for t in tracks], 4),
        pa.array([thumbnail_path(vid, video.run_key, person_track_id(vid, t.track_index)) for t in tracks],
                 pa.string()),
        pa.array([faces_of.get(t.track_index, []) for t in tracks], pa.list_(pa.string())),
    ], schema=PERSON_TRACKS)


def thumbnail_path(video_id: int, run_key: str, track_id: str) -> str:
    """Where a track's thumbnail lives, relative to the output root: named by its public track id."""
    return f"thumbnails/video-{video_id:08d}/run-{run_key}/{track_id}.jpg"
