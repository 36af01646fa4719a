"""The per-video pipeline: decode -> sample -> detect -> align -> embed -> track -> tables.

Decoding runs in a background thread (it releases the GIL inside FFmpeg / NVDEC) while the models
run on the batches it has already produced, so decode overlaps inference even on a CPU.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from engines.arrays import Array, to_host
from engines.imageops import laplacian_variance
from engines.loader import Engines
from indexer.decode.base import Decoder, FrameBatch, VideoInfo
from indexer.tracking import FaceTracker, face_quality
from schemas.config import IndexSettings
from schemas.tables import FACES, PERSONS, TRACKS

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2
THUMBNAIL_QUALITY = 88


@dataclass
class VideoResult:
    """Everything one video produced, ready to be written."""

    info: VideoInfo
    faces: pa.Table
    persons: pa.Table
    tracks: pa.Table
    thumbnails: dict[int, bytes]
    """JPEG bytes of each track's best face, by track id."""
    frames_decoded: int
    frames_analysed: int
    decode_s: float
    total_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "video": self.info.path, "frames_decoded": self.frames_decoded, "frames_analysed": self.frames_analysed,
            "faces": self.faces.num_rows, "persons": self.persons.num_rows, "tracks": self.tracks.num_rows,
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

    def add(self, pts: float, index: int, box: np.ndarray, score: float, kps: np.ndarray, **extra: Any) -> int:
        self.pts.append(pts)
        self.index.append(index)
        self.boxes.append(box)
        self.scores.append(score)
        self.keypoints.append(kps.reshape(-1))
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)
        return len(self.pts) - 1


def background(items: Iterator[FrameBatch], depth: int = PREFETCH_BATCHES) -> Iterator[FrameBatch]:
    """Run a generator in a thread, `depth` items ahead; its exceptions surface in the consumer."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=produce, name="vidx-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def jpeg(chip: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chip)).save(buf, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()


class VideoIndexer:
    """Indexes videos one after another with engines loaded once."""

    def __init__(self, engines: Engines, settings: IndexSettings, decoder: Decoder):
        self.engines = engines
        self.settings = settings
        self.decoder = decoder

    def index(self, path: Path, *, video_id: int, run_key: str,
              on_progress: Callable[[int, float], None] | None = None) -> VideoResult:
        """Index one video. VideoError for a bad video; results only when the whole video succeeded."""
        started = time.monotonic()
        det = self.settings.detection
        tracker = FaceTracker(self.settings.tracking)
        faces, persons = _Rows(), _Rows()
        best_chips: dict[int, np.ndarray] = {}
        info: VideoInfo | None = None
        batch_size = self.settings.runtime.detector_batch
        for batch in background(self.decoder.batches(path, self.settings.sampling, batch_size)):
            info = batch.video
            self._analyse(batch, faces, persons, tracker, best_chips)
            if on_progress:
                on_progress(len(batch), float(batch.pts_s[-1]))
        stats = self.decoder.stats
        if info is None:
            info = self.decoder.probe(path)
        thumbs = {tid: jpeg(chip) for tid, chip in best_chips.items()}
        return VideoResult(
            info=info,
            faces=_faces_table(faces, video_id, run_key),
            persons=_persons_table(persons, video_id, run_key) if det.detect_persons else PERSONS.empty_table(),
            tracks=_tracks_table(tracker, faces, video_id, run_key),
            thumbnails=thumbs,
            frames_decoded=stats.frames_decoded,
            frames_analysed=stats.frames_sampled,
            decode_s=stats.seconds,
            total_s=time.monotonic() - started,
        )

    def _analyse(self, batch: FrameBatch, faces: _Rows, persons: _Rows, tracker: FaceTracker,
                 best_chips: dict[int, np.ndarray]) -> None:
        det = self.settings.detection
        frames: list[Array] = list(batch.frames)
        face_dets = self.engines.faces.detect(frames)
        if self.engines.persons is not None and det.detect_persons:
            for f, dets in enumerate(self.engines.persons.detect(frames)):
                for k in range(len(dets)):
                    persons.add(float(batch.pts_s[f]), int(batch.frame_index[f]), dets.boxes[k],
                                float(dets.scores[k]), dets.keypoints[k])
        embeddable = [(f, k) for f, d in enumerate(face_dets) for k in range(len(d))
                      if d.boxes[k, 2] - d.boxes[k, 0] >= det.min_embed_px]
        sharp = np.zeros(0, np.float32)
        embeddings = np.zeros((0, 128), np.float32)
        ok_mask = np.zeros(0, bool)
        chips: Array | None = None
        if embeddable:
            kps = np.stack([face_dets[f].keypoints[k] for f, k in embeddable])
            chips = self.engines.embedder.chips(frames, [f for f, _ in embeddable], kps)
            sharp = laplacian_variance(chips)
            ok_mask = sharp >= det.min_sharpness
            embeddings = np.zeros((len(embeddable), 128), np.float32)
            if ok_mask.any():
                idx = np.nonzero(ok_mask)[0]
                embeddings[idx] = self.engines.embedder.embed_chips(chips[idx])
        lookup = {fk: i for i, fk in enumerate(embeddable)}
        for f, dets in enumerate(face_dets):
            t = float(batch.pts_s[f])
            rows, embs, boxes, kp_list, sharp_list, score_list = [], [], [], [], [], []
            for k in range(len(dets)):
                i = lookup.get((f, k))
                emb = embeddings[i] if i is not None and ok_mask[i] else None
                s = float(sharp[i]) if i is not None else None
                row = faces.add(t, int(batch.frame_index[f]), dets.boxes[k], float(dets.scores[k]), dets.keypoints[k],
                                size_px=float(dets.boxes[k, 2] - dets.boxes[k, 0]), sharpness=s, embedding=emb,
                                track_id=None, chip=i)
                rows.append(row)
                embs.append(emb)
                boxes.append(dets.boxes[k])
                kp_list.append(dets.keypoints[k])
                sharp_list.append(s if s is not None else 0.0)
                score_list.append(float(dets.scores[k]))
            if not rows:
                continue
            quality = face_quality(np.stack(boxes), np.stack(kp_list), np.asarray(sharp_list, np.float32),
                                   np.asarray(score_list, np.float32))
            ids = tracker.update(t, rows, np.stack(boxes), embs, quality)
            for row, tid in zip(rows, ids, strict=True):
                faces.extra["track_id"][row] = tid if tid >= 0 else None
                if tid >= 0 and tracker.tracks[tid].best_face == row and chips is not None:
                    best_chips[tid] = to_host(chips[faces.extra["chip"][row]]).copy()


def _fixed_list(rows: list[np.ndarray], width: int) -> pa.Array:
    flat = np.asarray(rows, np.float32).reshape(-1) if rows else np.zeros(0, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)


def _faces_table(rows: _Rows, video_id: int, run_key: str) -> pa.Table:
    n = len(rows)
    if n == 0:
        return FACES.empty_table()
    emb = rows.extra["embedding"]
    emb_flat = np.stack([e if e is not None else np.zeros(128, np.float32) for e in emb]).reshape(-1)
    emb_arr = pa.FixedSizeListArray.from_arrays(pa.array(emb_flat, pa.float32()), 128,
                                                mask=pa.array([e is None for e in emb]))
    return pa.Table.from_arrays([
        pa.array([video_id] * n, pa.int64()), pa.array([run_key] * n, pa.string()),
        pa.array(rows.pts, pa.float64()), pa.array(rows.index, pa.int64()),
        _fixed_list(rows.boxes, 4), pa.array(rows.scores, pa.float32()), _fixed_list(rows.keypoints, 12),
        pa.array(rows.extra["size_px"], pa.float32()), pa.array(rows.extra["sharpness"], pa.float32()),
        emb_arr, pa.array(rows.extra["track_id"], pa.int64()),
    ], schema=FACES)


def _persons_table(rows: _Rows, video_id: int, run_key: str) -> pa.Table:
    n = len(rows)
    if n == 0:
        return PERSONS.empty_table()
    return pa.Table.from_arrays([
        pa.array([video_id] * n, pa.int64()), pa.array([run_key] * n, pa.string()),
        pa.array(rows.pts, pa.float64()), pa.array(rows.index, pa.int64()),
        _fixed_list(rows.boxes, 4), pa.array(rows.scores, pa.float32()), _fixed_list(rows.keypoints, 8),
    ], schema=PERSONS)


def _tracks_table(tracker: FaceTracker, faces: _Rows, video_id: int, run_key: str) -> pa.Table:
    tracks = [t for t in tracker.tracks if t.n_embedded > 0]
    if not tracks:
        return TRACKS.empty_table()
    n = len(tracks)
    return pa.Table.from_arrays([
        pa.array([video_id] * n, pa.int64()), pa.array([run_key] * n, pa.string()),
        pa.array([t.track_id for t in tracks], pa.int64()),
        pa.array([t.start_s for t in tracks], pa.float64()), pa.array([t.end_s for t in tracks], pa.float64()),
        pa.array([t.n_faces for t in tracks], pa.int32()),
        _fixed_list([t.embedding for t in tracks], 128),
        pa.array([faces.pts[t.best_face] for t in tracks], pa.float64()),
        _fixed_list([faces.boxes[t.best_face] for t in tracks], 4),
        pa.array([t.best_quality for t in tracks], pa.float32()),
        pa.array([thumbnail_path(video_id, run_key, t.track_id) for t in tracks], pa.string()),
    ], schema=TRACKS)


def thumbnail_path(video_id: int, run_key: str, track_id: int) -> str:
    """Where a track's thumbnail lives, relative to the output root."""
    return f"thumbnails/video-{video_id:08d}/run-{run_key}/track-{track_id:04d}.jpg"
