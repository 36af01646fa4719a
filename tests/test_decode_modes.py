"""CPU decoding beyond the default path (issue 3): key-frame mode, codecs other than H.264/HEVC, and
cross-video batching giving the results of one video at a time.

Clips are short (3-4 s, 360p and smaller) and made the way the sample archive makes its own (its
Composer renders the frames, so who is on screen when is exact), encoded here with PyAV for the
codecs and GOP sizes the archive does not write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pytest

from engines.loader import Engines
from engines.verify import largest_face_embedding
from indexer.decode.base import FrameBatch
from indexer.decode.pyav import PyAVDecoder
from indexer.pipeline import VideoIndexer, VideoResult, VideoTask
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig
from vidx.sample_archive import Composer, Run, Shot, VideoPlan, build_video, ground_truth, store_planes

FPS = 30
SAME_PERSON = 0.6  # dlib descriptor L2 between two photos of one person (DESIGN.md)

# One portrait in a 3 s clip; with 2 fps sampling its first and last frames (0.5 s, 2.5 s) are samples.
PORTRAIT = VideoPlan("portrait", "h264", 640, 360, (Run(3.0, FPS),), (
    Shot("obama", 0.5, 2.5, (0.45, 0.5), (0.55, 0.5), 0.6, 0.65),))
# 4 s with the face from 0.9 to 3.1 s; encoded with a key frame every 20 frames (0, 0.67, 1.33 ... s),
# off the 2 fps grid, so key-frame timestamps cannot be mistaken for rate sampling.
KEYFRAME_GOP = 20
KEYFRAME_PLAN = VideoPlan("keyframes", "h264", 640, 360, (Run(4.0, FPS),), (
    Shot("obama", 0.9, 3.1, (0.4, 0.5), (0.6, 0.5), 0.6, 0.6),))


def encode_clip(plan: VideoPlan, photos: dict[str, np.ndarray], path: Path, encoder: str, *, container: str,
                options: dict[str, str] | None = None, gop: int = 2 * FPS, bit_rate: int | None = None) -> Path:
    """Render the plan with the sample archive's Composer and encode it with any PyAV encoder, constant rate.

    (VideoPlan.codec only steers the archive's own encoder choice; the encoder here is `encoder`.)
    """
    composer = Composer(plan, photos, seed=3)
    fps = plan.runs[0].fps
    with av.open(str(path), mode="w", format=container) as out:
        stream: Any = out.add_stream(encoder, rate=fps, options=options or {})
        stream.width, stream.height = plan.width, plan.height
        stream.pix_fmt = "yuv420p"
        ctx = stream.codec_context
        ctx.time_base = Fraction(1, fps)
        ctx.gop_size = gop
        if bit_rate:
            ctx.bit_rate = bit_rate
        for pts, _ in plan.schedule():
            frame = av.VideoFrame.from_ndarray(store_planes(composer.planes(pts * plan.time_base), 0),
                                               format="yuv420p")
            frame.pts, frame.time_base = pts, plan.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def frame_times(plan: VideoPlan) -> np.ndarray:
    return np.asarray([float(pts * plan.time_base) for pts, _ in plan.schedule()])


def indexer_for(engines: Engines, sampling: SamplingConfig | None = None, *, persons: bool = False,
                frame_batch: int = 0, decoder: PyAVDecoder | None = None) -> VideoIndexer:
    settings = IndexSettings(sampling=sampling or SamplingConfig(), detection=DetectionConfig(detect_persons=persons),
                             runtime=RuntimeConfig(device="cpu", frame_batch=frame_batch))
    return VideoIndexer(engines, settings, decoder or PyAVDecoder())


def embeddings(table: pa.Table) -> np.ndarray:
    """N x 128; rows without an embedding (a face too small or blurred to embed) are NaN."""
    rows = table.column("embedding").to_pylist()
    return np.asarray([r if r is not None else [np.nan] * 128 for r in rows], np.float32).reshape(-1, 128)


@pytest.fixture(scope="module")
def descriptors(engines: Engines, photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name in ("obama", "biden", "astronaut"):
        _, emb = largest_face_embedding(engines, photos[name])
        assert emb is not None, name
        out[name] = emb
    return out


def assert_one_track_of(result: VideoResult, ref: np.ndarray, start_s: float, end_s: float, tol: float) -> None:
    """Exactly one track, of the person in `ref`, from start_s to end_s (within tol)."""
    tracks = result.tracks
    spans = list(zip(tracks.column("start_s").to_pylist(), tracks.column("end_s").to_pylist(), strict=True))
    assert tracks.num_rows == 1, spans
    dist = float(np.linalg.norm(embeddings(tracks)[0] - ref))
    assert dist < SAME_PERSON, (dist, spans)
    assert abs(spans[0][0] - start_s) <= tol and abs(spans[0][1] - end_s) <= tol, (spans, start_s, end_s)


# --- a. key frames -------------------------------------------------------------------------------------


def test_keyframe_mode_analyses_only_the_key_frames(tmp_path: Path, engines: Engines, photos: dict[str, np.ndarray],
                                                     descriptors: dict[str, np.ndarray]) -> None:
    path = encode_clip(KEYFRAME_PLAN, photos, tmp_path / "gop20_h264.mp4", "libx264", container="mp4",
                       options={"preset": "veryfast", "crf": "23"}, gop=KEYFRAME_GOP)
    # What PyAV itself says, decoding every frame (x264 may add a key frame at a scene cut: it counts too).
    with av.open(str(path)) as container:
        stream: Any = container.streams.video[0]
        decoded = [(float(f.pts * stream.time_base), bool(f.key_frame)) for f in container.decode(stream)]
    keys = np.asarray([t for t, key in decoded if key])
    assert len(decoded) == 4 * FPS
    assert len(keys) >= 6 and not np.allclose(keys * 2, np.round(keys * 2)), keys  # off the 0.5 s grid

    decoder = PyAVDecoder()
    sampled = [b for b in decoder.batches(path, SamplingConfig(mode="keyframes"), 16)]
    pts = np.concatenate([b.pts_s for b in sampled])
    np.testing.assert_allclose(pts, keys, atol=1e-6)
    assert decoder.stats.frames_sampled == len(keys)
    assert decoder.stats.frames_decoded == len(keys)  # the decoder skipped the other frames (skip_frame NONKEY)

    result = indexer_for(engines, SamplingConfig(mode="keyframes")).index(path, video_id=1, run_key="k")
    assert result.frames_analysed == len(keys)
    assert result.frames_decoded == len(keys)
    face_pts = np.unique(result.faces.column("pts_s").to_numpy())
    assert np.isin(np.round(face_pts, 6), np.round(keys, 6)).all(), face_pts
    (app,) = ground_truth(KEYFRAME_PLAN)
    shown = keys[(keys >= app.start_s - 1e-6) & (keys <= app.end_s + 1e-6)]
    assert len(shown) >= 3, shown
    # found on the first and the last key frame that shows the face, and on no key frame without it
    np.testing.assert_allclose(face_pts, shown, atol=1e-6)
    assert_one_track_of(result, descriptors["obama"], float(shown[0]), float(shown[-1]), tol=1e-6)


# --- b. codecs beyond H.264 / HEVC ---------------------------------------------------------------------

# "names": what VideoInfo.codec must say: the codec's canonical name, whichever decoder library reads it.
CODECS: dict[str, dict[str, Any]] = {
    # webm stores milliseconds: 1/30 s comes back as 0.033 s
    "vp9": {"encoders": ["libvpx-vp9"], "container": "webm", "suffix": ".webm", "names": {"vp9"},
            "options": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0", "row-mt": "1"},
            "pts_tol": 0.5e-3},
    "av1": {"encoders": ["libaom-av1", "libsvtav1"], "container": "mp4", "suffix": ".mp4",
            "names": {"av1"}, "pts_tol": 1e-6,
            "options": {"libaom-av1": {"cpu-used": "8", "crf": "35", "usage": "realtime"},
                        "libsvtav1": {"preset": "12", "crf": "35"}}},
    "mpeg4": {"encoders": ["mpeg4"], "container": "mp4", "suffix": ".mp4", "names": {"mpeg4"},
              "options": {}, "bit_rate": 3_000_000, "pts_tol": 1e-6},
}


def available_encoder(names: list[str]) -> str | None:
    for name in names:
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # PyAV raises different errors for an unknown codec across versions
            continue
    return None


@pytest.mark.parametrize("codec", list(CODECS))
def test_other_codecs_decode_and_index(codec: str, tmp_path: Path, engines: Engines, photos: dict[str, np.ndarray],
                                       descriptors: dict[str, np.ndarray]) -> None:
    spec = CODECS[codec]
    encoder = available_encoder(spec["encoders"])
    if encoder is None:
        pytest.skip(f"this PyAV/FFmpeg build has no {codec} encoder ({' or '.join(spec['encoders'])})")
    options = spec["options"].get(encoder, {}) if codec == "av1" else spec["options"]
    path = encode_clip(PORTRAIT, photos, tmp_path / f"portrait_{codec}{spec['suffix']}", encoder,
                       container=spec["container"], options=options, bit_rate=spec.get("bit_rate"))
    if codec == "mpeg4":
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.codec_tag == "mp4v"

    decoder = PyAVDecoder()
    batches: list[FrameBatch] = list(decoder.batches(path, SamplingConfig(mode="every-frame"), 32))
    pts = np.concatenate([b.pts_s for b in batches])
    expected = frame_times(PORTRAIT)
    assert decoder.stats.frames_decoded == len(pts) == len(expected) == 3 * FPS
    np.testing.assert_allclose(pts, expected, atol=spec["pts_tol"] + 1e-9)
    assert np.all(np.diff(pts) > 0)
    info = batches[0].video
    assert info.codec in spec["names"], info.codec
    assert (info.width, info.height) == (640, 360) and batches[0].frames.shape[1:] == (360, 640, 3)
    assert info.fps == pytest.approx(FPS, abs=0.01)
    assert info.duration_s == pytest.approx(3.0, abs=0.05)

    result = indexer_for(engines).index(path, video_id=1, run_key=codec)
    assert result.frames_decoded == 3 * FPS and result.frames_analysed == 6  # 2 fps over 3 s
    (app,) = ground_truth(PORTRAIT)
    # 0.5 s and 2.5 s are both sampled: the track spans exactly the samples that show the face
    assert_one_track_of(result, descriptors["obama"], app.start_s, app.end_s, tol=spec["pts_tol"] + 1e-6)
    assert set(np.round(result.faces.column("pts_s").to_numpy(), 3)) == {0.5, 1.0, 1.5, 2.0, 2.5}


# --- c. cross-video batching ---------------------------------------------------------------------------

BATCH_PLANS = (  # three sizes, so a step's frames show which videos they came from
    VideoPlan("a_obama.mp4", "h264", 640, 360, (Run(3.5, FPS),), (
        Shot("obama", 0.5, 3.0, (0.3, 0.45), (0.5, 0.5), 0.6, 0.7),)),
    VideoPlan("b_biden.mp4", "h264", 512, 288, (Run(3.5, FPS),), (
        Shot("biden", 0.0, 2.0, (0.5, 0.6), (0.5, 0.5), 0.7, 0.7),)),
    VideoPlan("c_two.mp4", "h264", 448, 256, (Run(3.5, FPS),), (
        Shot("astronaut", 0.0, 1.5, (0.3, 0.5), (0.4, 0.5), 0.7, 0.7),
        Shot("biden", 2.0, 3.5, (0.7, 0.5), (0.6, 0.5), 0.7, 0.7),)),
)
STEP = 4  # 7 samples per clip (2 fps, 3.5 s): a full batch of 4 and a tail of 3 that can share a step


class InStepDecoder(PyAVDecoder):
    """PyAV, but each video's frames are decoded first and handed over only when all three videos have been
    decoded, and no video ends before all have handed theirs over: every tail batch then meets another
    video's frames in the pipeline's queue. Only the timing differs from PyAVDecoder, not the frames."""

    def __init__(self, parties: int):
        super().__init__()
        self.decoded = threading.Barrier(parties, timeout=60)
        self.handed_over = threading.Barrier(parties, timeout=60)

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        ready = list(super().batches(path, sampling, batch_size))
        self.decoded.wait()
        yield from ready
        self.handed_over.wait()


def test_cross_video_batching_gives_one_video_at_a_time_results(
        tmp_path: Path, engines: Engines, photos: dict[str, np.ndarray], descriptors: dict[str, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    videos = [build_video(plan, tmp_path, photos) for plan in BATCH_PLANS]
    tasks = [VideoTask(Path(v.path), i + 1, "batching") for i, v in enumerate(videos)]

    alone: dict[str, VideoResult] = {}
    for task in tasks:
        ((_, result),) = list(indexer_for(engines, persons=True, frame_batch=STEP).index_many([task], in_flight=1))
        assert isinstance(result, VideoResult), result
        alone[task.path.name] = result

    steps: list[set[tuple[int, ...]]] = []
    detect = engines.faces.detect

    def spying_detect(frames: list[Any]) -> Any:
        steps.append({tuple(f.shape) for f in frames})
        return detect(frames)

    monkeypatch.setattr(engines.faces, "detect", spying_detect)
    batched_indexer = indexer_for(engines, persons=True, frame_batch=STEP, decoder=InStepDecoder(len(tasks)))
    batched = {task.path.name: result for task, result in batched_indexer.index_many(tasks, in_flight=3)}
    monkeypatch.undo()
    assert any(len(shapes) > 1 for shapes in steps), steps  # frames of different videos shared a step
    assert sorted(batched) == sorted(alone)

    for video in videos:
        a, b = alone[video.name], batched[video.name]
        assert isinstance(b, VideoResult), b
        assert (a.frames_decoded, a.frames_analysed) == (b.frames_decoded, b.frames_analysed) == (105, 7)
        # faces: same frames, same boxes (within a pixel), same embeddings, same track of each
        fa, fb = a.faces, b.faces
        assert fa.num_rows == fb.num_rows > 0, video.name
        assert fa.column("pts_s").to_pylist() == fb.column("pts_s").to_pylist()
        assert fa.column("track_id").to_pylist() == fb.column("track_id").to_pylist()
        boxes_a, boxes_b = (np.asarray(t.column("bbox").to_pylist()) for t in (fa, fb))
        assert np.abs(boxes_a - boxes_b).max() < 1.0, video.name
        ea, eb = embeddings(fa), embeddings(fb)
        assert np.array_equal(np.isnan(ea[:, 0]), np.isnan(eb[:, 0])), video.name  # the same faces embedded
        emb_diff = np.linalg.norm(np.nan_to_num(ea - eb), axis=1)
        assert emb_diff.max() < 0.02, (video.name, emb_diff)
        # tracks: as many, same spans, same descriptors
        ta, tb = a.tracks, b.tracks
        assert ta.num_rows == tb.num_rows == len(video.appearances), video.name
        for col in ("start_s", "end_s", "n_faces", "best_pts_s"):
            assert ta.column(col).to_pylist() == tb.column(col).to_pylist(), (video.name, col)
        assert np.linalg.norm(embeddings(ta) - embeddings(tb), axis=1).max() < 0.02, video.name
        # people: same frames and boxes
        pa_, pb = a.persons, b.persons
        assert pa_.num_rows == pb.num_rows, video.name
        assert pa_.column("pts_s").to_pylist() == pb.column("pts_s").to_pylist()
        if pa_.num_rows:
            assert np.abs(np.asarray(pa_.column("bbox").to_pylist())
                          - np.asarray(pb.column("bbox").to_pylist())).max() < 1.0, video.name
        # and the answer is the truth: each appearance is its person's track at its time
        for app, start, end, emb in zip(video.appearances, tb.column("start_s").to_pylist(),
                                        tb.column("end_s").to_pylist(), embeddings(tb), strict=True):
            assert np.linalg.norm(emb - descriptors[app.photo]) < SAME_PERSON, (video.name, app)
            assert abs(start - app.start_s) <= 0.5 + 1e-6 and abs(end - app.end_s) <= 0.5 + 1e-6, (video.name, app)
