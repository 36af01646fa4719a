"""CPU decoding beyond the default path: key-frame mode, codecs other than H.264/HEVC, and
cross-video batching giving the results of one video at a time.

Clips are short (3-4 s, 360p and smaller) and made the way the sample archive makes its own (its
Composer renders the frames, so who is on screen when is exact), encoded here with PyAV for the
codecs and GOP sizes the archive does not write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pytest
from scheduling import scheduling, scheduling_kept  # tests/scheduling.py

from engines.loader import Engines
from engines.verify import largest_face_embedding
from indexer.decode.base import FrameBatch, FrameSampler, PacketPlan
from indexer.decode.bitstream import ReferenceScanner
from indexer.decode.pyav import PyAVDecoder
from indexer.pipeline import VideoIndexer, VideoResult, VideoTask
from samples.archive import Composer, Run, Shot, VideoPlan, build_video, ground_truth, store_planes
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig

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
    with scheduling_kept(), av.open(str(path), mode="w", format=container) as out:
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
    # each key frame keeps its place among all frames, though the others were never decoded
    assert np.concatenate([b.frame_index for b in sampled]).tolist() == [i for i, (_, k) in enumerate(decoded) if k]
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
    before = scheduling()
    path = encode_clip(PORTRAIT, photos, tmp_path / f"portrait_{codec}{spec['suffix']}", encoder,
                       container=spec["container"], options=options, bit_rate=spec.get("bit_rate"))
    assert scheduling() == before  # libsvtav1 as root leaves the thread SCHED_FIFO unless put back
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
    queue_detect = engines.faces.queue_detect

    def spying_queue_detect(frames: list[Any], **kwargs: Any) -> Any:
        steps.append({tuple(f.shape) for f in frames})
        return queue_detect(frames, **kwargs)

    monkeypatch.setattr(engines.faces, "queue_detect", spying_queue_detect)
    batched_indexer = indexer_for(engines, persons=True, frame_batch=STEP, decoder=InStepDecoder(len(tasks)))
    batched = {task.path.name: result for task, result in batched_indexer.index_many(tasks, in_flight=3)}
    monkeypatch.undo()
    assert any(len(shapes) > 1 for shapes in steps), steps  # frames of different videos shared a step
    assert sorted(batched) == sorted(alone)

    for video in videos:
        a, b = alone[video.name], batched[video.name]
        assert isinstance(b, VideoResult), b
        assert (a.frames_in_video, a.frames_analysed) == (b.frames_in_video, b.frames_analysed) == (105, 7)
        assert a.frames_decoded == b.frames_decoded < 105  # unsampled B-frames were not decoded
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


class GatedDecoder(PyAVDecoder):
    """PyAV, but after each hand-off the decoder waits until the models have started, and it records how
    many frames each hand-off held."""

    def __init__(self) -> None:
        super().__init__()
        self.models_started = threading.Event()
        self.handoffs: list[int] = []

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        for batch in super().batches(path, sampling, batch_size):
            self.handoffs.append(len(batch))
            yield batch
            assert self.models_started.wait(60), "the models never started on the frames handed over"


def test_models_start_before_a_video_has_decoded_a_whole_step(
        tmp_path: Path, engines: Engines, photos: dict[str, np.ndarray], descriptors: dict[str, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = BATCH_PLANS[0]  # 3.5 s at 4 fps: 14 samples, fewer than a step of 16
    video = build_video(plan, tmp_path, photos)
    decoder = GatedDecoder()
    first_step: list[int] = []
    queue_detect = engines.faces.queue_detect

    def spying_queue_detect(frames: list[Any], **kwargs: Any) -> Any:
        if not first_step:
            first_step.append(len(frames))
            decoder.models_started.set()
        return queue_detect(frames, **kwargs)

    monkeypatch.setattr(engines.faces, "queue_detect", spying_queue_detect)
    indexer = indexer_for(engines, SamplingConfig(fps=4.0), frame_batch=16, decoder=decoder)
    result = indexer.index(Path(video.path), video_id=1, run_key="handoff")
    monkeypatch.undo()
    # the first frames went to the models while the rest of the video was still to be decoded
    assert first_step == [decoder.handoffs[0]] and decoder.handoffs[0] < 14, (first_step, decoder.handoffs)
    assert sum(decoder.handoffs) == result.frames_analysed == 14
    (app,) = video.appearances
    assert_one_track_of(result, descriptors[app.photo], app.start_s, app.end_s, tol=0.25 + 1e-6)


# --- d. frames no sample needs are not decoded ---------------------------------------------------------


def _stream_in_decode_order(rng: np.random.Generator, n: int) -> tuple[list[int], list[int], set[int]]:
    """A made-up stream: presentation PTS (1/90000 s, frame gaps from 1/60 to 1/10 s), the packets' decode
    order (each anchor before the B-frames it closes, B-pyramids up to 7 deep) and which are non-reference."""
    pts = np.concatenate([[0], np.cumsum(rng.integers(1500, 9000, n - 1))]).tolist()
    order: list[int] = [0]
    nonref: set[int] = set()
    i = 0
    while i < n - 1:
        gap = int(min(rng.integers(1, 8), n - 1 - i))
        order.append(i + gap)  # the anchor (a reference)
        middle = list(range(i + 1, i + gap))
        if middle:
            mid = middle[len(middle) // 2]
            order += [mid] + [j for j in middle if j != mid]  # a pyramid: its middle frame first
            nonref |= {j for j in middle if j != mid or rng.random() < 0.5}
        i += gap
    return pts, order, nonref


def _sampled(pts: Sequence[int], sampling: SamplingConfig) -> list[int]:
    sampler = FrameSampler(sampling)
    return [p for p in pts if sampler.take(p / 90000, False)]


@pytest.mark.parametrize("fps", [2.0, 0.5, 7.0, 29.97])
def test_packet_plan_never_skips_a_frame_the_sampler_takes(fps: float) -> None:
    sampling = SamplingConfig(fps=fps)
    skipped_any = False
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pts, order, nonref = _stream_in_decode_order(rng, 400)
        plan = PacketPlan(sampling, Fraction(1, 90000), pts[0])
        decoded = [f for f in order if plan.packet(pts[f]) or f not in nonref]
        skipped_any |= len(decoded) < len(pts)
        shown = sorted(decoded)  # a decoder outputs frames in presentation order
        assert _sampled([pts[f] for f in shown], sampling) == _sampled(pts, sampling), seed
        # every decoded frame is told its place among all frames, skipped ones included
        assert [plan.frame_index(pts[f]) for f in shown] == shown, seed
    assert skipped_any


def _annex_b_packets(path: Path) -> tuple[str, bytes, list[av.Packet]]:
    """The codec, its extradata and the stream's packets in Annex B form, as NVDEC gets them from
    PyNvVideoCodec's demuxer (here with the parameter sets in band too)."""
    from av.bitstream import BitStreamFilterContext

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        extradata = bytes(stream.codec_context.extradata or b"")
        bsf = BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
        return codec, extradata, [out for packet in container.demux(stream) for out in bsf.filter(packet)]


def _decode_annex_b(codec: str, packets: list[av.Packet]) -> dict[int, np.ndarray]:
    ctx = av.CodecContext.create(codec, "r")
    frames = {}
    for packet in [*packets, None]:
        for frame in ctx.decode(packet):
            frames[frame.pts] = frame.to_ndarray(format="gray")
    return frames


@pytest.mark.parametrize("encoder,options", [
    ("libx264", {"preset": "veryfast"}),
    ("libx265", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    # temporal sub-layers: a non-reference picture of a lower sub-layer is still referred to by higher ones
    ("libx265", {"preset": "fast", "x265-params": "log-level=error:temporal-layers=3:b-pyramid=1"}),
], ids=["h264", "hevc", "hevc-temporal-layers"])
def test_reference_scanner_drops_only_pictures_nothing_refers_to(
        encoder: str, options: dict[str, str], tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    path = encode_clip(PORTRAIT, photos, tmp_path / f"{encoder}.mp4", encoder, container="mp4", options=options)
    codec, extradata, packets = _annex_b_packets(path)
    scanner = ReferenceScanner(codec)
    droppable = [scanner.droppable(bytes(p)) for p in packets]
    assert 0 < sum(droppable) < len(packets) // 2 + 1, droppable
    if codec == "hevc":  # the MP4's hvcC record says what the in-band SPS says
        assert ReferenceScanner(codec, extradata).top_sub_layer == scanner.top_sub_layer is not None
    # Some droppable pictures are still decoded (as when sampled): whatever they refer to must be there.
    kept = [p for i, p in enumerate(packets) if not droppable[i] or i % 3 == 0]
    every = _decode_annex_b(codec, packets)
    some = _decode_annex_b(codec, kept)
    assert len(every) == len(packets) == 3 * FPS and sorted(some) == sorted(p.pts for p in kept)
    for pts, image in some.items():  # bit for bit what decoding every frame gives
        assert np.array_equal(image, every[pts]), pts


def test_reference_scanner_reads_nal_headers_by_the_specs() -> None:
    def nal(*header: int, body: bytes = b"\x88\x84") -> bytes:
        return b"\x00\x00\x00\x01" + bytes(header) + body

    h264 = ReferenceScanner("h264")
    sei, non_idr_ref, non_idr_nonref, idr = nal(0x06), nal(0x41), nal(0x01), nal(0x65)
    assert h264.droppable(sei + non_idr_nonref)  # nal_ref_idc 0: nothing refers to it
    assert not h264.droppable(sei + non_idr_ref) and not h264.droppable(idr)
    assert not h264.droppable(sei)  # no slice in the packet: keep it

    def hevc_nal(kind: int, temporal_id: int, body: bytes = b"\xaf\x00") -> bytes:
        return nal(kind << 1, temporal_id + 1, body=body)

    hevc = ReferenceScanner("hevc")
    tsa_n_1, tsa_n_2, trail_r_2 = hevc_nal(2, 1), hevc_nal(2, 2), hevc_nal(1, 2)
    assert not hevc.droppable(tsa_n_2)  # no SPS seen yet: the stream's top sub-layer is unknown
    sps = hevc_nal(33, 0, body=bytes([0x02 << 1 | 0x01]))  # sps_max_sub_layers_minus1 = 2
    assert not hevc.droppable(sps + hevc_nal(19, 0))  # IDR
    assert hevc.droppable(tsa_n_2)
    assert not hevc.droppable(tsa_n_1)  # a lower sub-layer's non-reference picture: higher ones may refer to it
    assert not hevc.droppable(trail_r_2)
    assert not ReferenceScanner("vp9").droppable(tsa_n_2)
    # the same SPS from an MP4 hvcC record (22 bytes of stream facts, one array: the SPS, length-prefixed)
    sps_nal = sps[4:]
    hvcc = bytes(22) + bytes([1, 0x80 | 33, 0, 1]) + len(sps_nal).to_bytes(2, "big") + sps_nal
    from_mp4 = ReferenceScanner("hevc", hvcc)
    assert from_mp4.top_sub_layer == 2 and from_mp4.droppable(tsa_n_2) and not from_mp4.droppable(tsa_n_1)


@pytest.mark.parametrize("encoder,options", [
    ("libx264", {"preset": "veryfast"}),
    ("libx265", {"preset": "ultrafast", "x265-params": "log-level=error"}),
], ids=["h264", "hevc"])
def test_cpu_decoder_skips_unsampled_frames_and_samples_the_same(
        encoder: str, options: dict[str, str], tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    path = encode_clip(PORTRAIT, photos, tmp_path / f"{encoder}.mp4", encoder, container="mp4", options=options)
    runs = {}
    for skip in (False, True):
        decoder = PyAVDecoder(skip_unsampled=skip)
        batches = list(decoder.batches(path, SamplingConfig(fps=2.0), 4))
        runs[skip] = (decoder.stats, np.concatenate([b.frames for b in batches]),
                      np.concatenate([b.pts_s for b in batches]), np.concatenate([b.frame_index for b in batches]))
    (every, frames_a, pts_a, index_a), (some, frames_b, pts_b, index_b) = runs[False], runs[True]
    assert every.frames_decoded == every.frames_in_video == some.frames_in_video == 3 * FPS
    assert some.frames_decoded < 0.75 * every.frames_decoded, some  # the B-frames in between were skipped
    np.testing.assert_allclose(pts_b, np.arange(6) * 0.5, atol=1e-6)
    assert np.array_equal(pts_a, pts_b) and np.array_equal(frames_a, frames_b)
    assert index_b.tolist() == index_a.tolist() == [15 * i for i in range(6)]
