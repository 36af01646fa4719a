"""Validated settings that travel from the CLI to the engines and the indexer.

Frozen dataclasses that check themselves on construction, so a bad value fails at the edge with a
message that lists what is allowed, never deep inside a worker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

SamplingMode = Literal["fps", "keyframes", "every-frame"]
DeviceChoice = Literal["auto", "cpu", "gpu"]
EngineChoice = Literal["auto", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8", "tensorrt"]
EngineStart = Literal["background", "wait", "quick"]
FaceDetectorChoice = Literal["blazeface", "centerface"]
FaceSearch = Literal["guided", "full"]
"""blazeface: MediaPipe BlazeFace full-range over an image pyramid; centerface: CenterFace over whole frames
(docs/models.md compares them)."""
"""auto: TensorRT, else ONNX Runtime, FP16 on a GPU either way; onnxruntime: FP32; onnxruntime-fp16: ONNX
Runtime on the GPU with an FP16 copy of each model (TensorRT is always FP16); onnxruntime-int8: FP32, but the
person detector's INT8 copy on a CPU (its own run key: it changes person tracks)."""

PIPELINE_VERSION = "4"
"""Bump when a change to the indexer changes its results; older runs become stale."""

# How jobs run unless told otherwise: shared by the CLI's options, the worker processes and Ray's workers.
DEFAULT_MAX_ATTEMPTS = 3
"""Attempts at a video whose worker (or, in-process, the whole driver) dies or hangs each time."""
DEFAULT_STALL_TIMEOUT_S = 300.0
"""Seconds without a decoded batch after which a video counts as hung (worker processes, Ray)."""
DEFAULT_WORKERS_PER_GPU = 2
"""Worker processes sharing one GPU (worker processes, Ray)."""
NVDEC_VIDEOS_IN_FLIGHT = 8
"""Videos decoded at once by one worker with NVDEC, unless RuntimeConfig.videos_in_flight says otherwise (the
H100 has 7 NVDEC engines). On an H100, one process, 28 bench clips at 2 fps: HEVC ran at 0.88-1.02x its
decode-only rate with 8 and 0.60-0.79x with 21; H.264 at 5,300-5,800 video fps with 8 and 6,250-6,410 with 14
(docs/performance.md, "Videos in flight and frames per step")."""


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} must be between {low} and {high}; got {value}")


@dataclass(frozen=True)
class SamplingConfig:
    """Which decoded frames are analysed. Timestamps come from container PTS (a bare stream has none: its frames
    are counted at its frame rate)."""

    mode: SamplingMode = "fps"
    fps: float = 2.0

    def __post_init__(self) -> None:
        check_choice("sampling mode", self.mode, get_args(SamplingMode))
        check_range("sample fps", self.fps, 0.01, 240.0)

    @property
    def interval_s(self) -> float | None:
        """Seconds between analysed frames when sampling by rate; None for the other modes."""
        return 1.0 / self.fps if self.mode == "fps" else None


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds and sizes that decide what counts as a face or a person."""

    face_score: float = 0.65
    """Real faces in the test photos score 0.68-0.92 (t1's weakest 0.68), the highest-scoring clutter in
    them 0.54, and in synthetic 1080p frames 0.59 (docs/models.md, measured with the pyramid of whole levels)."""
    person_score: float = 0.4
    """Objectness x person probability of YOLOv3-tiny. On vtest.avi boxes scoring 0.4-0.5 were people but 2 of
    33, those scoring 0.3-0.4 not people 10 times in 38 (stones, bollards; docs/models.md)."""
    min_face_px: int = 24
    """Smallest face (box width in frame pixels) the detector's pyramid must be able to find."""
    min_embed_px: int = 28
    """Faces narrower than this are kept as detections but not embedded or tracked (a 24 px face already
    drifts 0.49 in L2 from the same face at 300 px; see docs/models.md)."""
    min_sharpness: float = 3.0
    """Variance of the Laplacian of the aligned grey chip. A blur that moves the descriptor ~0.6 (the
    identity threshold) gives 1-3; a mild blur (drift ~0.33) 6-9; sharp faces 13-480 (docs/models.md)."""
    detect_persons: bool = True
    face_detector: FaceDetectorChoice = "blazeface"
    centerface_score: float = 0.5
    """CenterFace's heatmap threshold (face_score is BlazeFace's); docs/models.md has the measurement."""
    face_search: FaceSearch = "guided"
    """Where BlazeFace's finest pyramid level (the smallest faces, most of its cost) looks. "full": over every
    analysed frame. "guided": over the heads of the people the person detector found in the frame, and over
    whole frames once every `full_search_every_s` of video (a video's first sample included), so that small
    faces without a detected body are still found. The coarser levels always cover whole frames. Without
    person detection, guided searches whole frames."""
    full_search_every_s: float = 2.0
    """Seconds of video between whole-frame searches of the finest level in guided search."""
    persons_every_s: float = 0.1
    """Seconds of video between the samples the person detector runs on (a video's first sample included).
    Samples closer together than this (every frame of a 30 fps video: two in three) run the face detector
    only; the people found at the last such sample stand in for the frame's people: guided search looks
    around their heads, and faces are tied to their tracks (moved on to the frame's time). At the default
    sampling (2 fps) every sample runs it; 0 runs it on every sample. Person tracks link boxes 0.1 s apart
    as well as at every frame; at 0.2 s they switched between pedestrians crossing on vtest.avi
    (docs/performance.md, "Person detection every 0.1 s")."""

    def __post_init__(self) -> None:
        check_choice("face detector", self.face_detector, get_args(FaceDetectorChoice))
        check_choice("face search", self.face_search, get_args(FaceSearch))
        check_range("seconds between full face searches", self.full_search_every_s, 0.0, 86400.0)
        check_range("seconds between person detections", self.persons_every_s, 0.0, 86400.0)
        check_range("CenterFace score threshold", self.centerface_score, 0.05, 0.99)
        check_range("face score threshold", self.face_score, 0.05, 0.99)
        check_range("person score threshold", self.person_score, 0.05, 0.99)
        check_range("min face size", self.min_face_px, 8, 4096)
        check_range("min embedded face size", self.min_embed_px, 8, 4096)
        check_range("min sharpness", self.min_sharpness, 0.0, 1e6)


@dataclass(frozen=True)
class TrackingConfig:
    """How detections in successive samples are linked into face tracks."""

    max_gap_s: float = 2.5
    """A track ends when its face is not seen for this long (a few sampling intervals)."""
    max_embedding_distance: float = 0.55
    """L2 between raw dlib descriptors; dlib's same-person threshold is 0.6."""
    max_embedding_distance_in_place: float = 0.7
    """The same, for a face where the track's last face was (box IoU >= 0.3): a head turning towards profile
    moves the descriptor by 0.56-0.60 between two samples (group_t1 clip), while two different people are
    0.76-0.96 apart (docs/models.md)."""
    min_iou: float = 0.0
    """Positional overlap required in addition to the embedding match (0 = embedding alone decides)."""

    def __post_init__(self) -> None:
        check_range("track gap", self.max_gap_s, 0.0, 3600.0)
        check_range("track embedding distance", self.max_embedding_distance, 0.0, 2.0)
        check_range("track embedding distance in place", self.max_embedding_distance_in_place, 0.0, 2.0)
        check_range("track iou", self.min_iou, 0.0, 1.0)


@dataclass(frozen=True)
class PersonTrackingConfig:
    """How person boxes in successive samples are linked into person tracks."""

    max_gap_s: float = 2.0
    """A person track ends when nobody is seen where it was heading for this long."""
    max_shift: float = 1.0
    """How far a box may be from where the track was heading and still continue it: centre distance over the
    boxes' size (the geometric mean of their sides). At 2 samples per second a walker's first step, before
    the track has a velocity, is about half a box size."""
    min_iou: float = 0.3
    """A box overlapping the predicted box this much continues the track however far the centres are apart
    (a person bending or half hidden changes the box's shape more than its place)."""
    min_detections: int = 2
    """Tracks seen fewer times than this are dropped as passing false boxes."""

    def __post_init__(self) -> None:
        check_range("person track gap", self.max_gap_s, 0.0, 3600.0)
        check_range("person track shift", self.max_shift, 0.0, 100.0)
        check_range("person track iou", self.min_iou, 0.0, 1.0)
        check_range("person track detections", self.min_detections, 1, 1_000_000)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the engines run. Does not change results beyond rounding, so it is not part of the run
    key (except the INT8 person detector: IndexSettings.result_params)."""

    device: DeviceChoice = "auto"
    engine: EngineChoice = "auto"
    detector_batch: int = 0
    """Frames per detector run, one pyramid level at a time (0 = automatic: on a GPU 64 when every frame is
    analysed on one of 48 GiB or more, else 32 (engines.loader.detector_batch_for); 4 on a CPU)."""
    embedder_batch: int = 64
    decode_threads: int = 0
    """Threads per CPU decoder (0 = let FFmpeg choose)."""
    frame_batch: int = 0
    """Sampled frames (from any of the videos in flight) analysed together in one step (0 = automatic: the
    detectors' batch on a GPU, 8 on a CPU, where two steps run at once)."""
    decode_handoff: int = 0
    """Sampled frames a decoder hands to the models at once, at most a step's worth (0 = automatic: 8)."""
    videos_in_flight: int = 0
    """Videos decoded at once by one worker (0 = automatic: 8 with NVDEC, which has up to 7 engines, else 1)."""
    engine_start: EngineStart = "background"
    """How a GPU worker sets its models up (ONNX Runtime's CUDA provider, which prepares each input shape on its
    first run; docs/gpu.md, "Starting up"). background: each shape first runs on a session set up in about a
    second (depthwise convolutions as ordinary ones with diagonal weights, engines.convert.depthwise), while
    the fastest sessions (FP16 in NHWC with fused bias, native depthwise convolutions) are set up behind them,
    one shape at a time, and take over as each is ready; wait: the fastest sessions before the first frame;
    quick: the quick ones only. The same results up to rounding, so not part of the run key."""

    def __post_init__(self) -> None:
        check_choice("device", self.device, get_args(DeviceChoice))
        check_choice("engine", self.engine, get_args(EngineChoice))
        check_range("detector batch", self.detector_batch, 0, 4096)
        check_range("embedder batch", self.embedder_batch, 1, 4096)
        check_range("decode threads", self.decode_threads, 0, 256)
        check_range("frame batch", self.frame_batch, 0, 1024)
        check_range("decode hand-off", self.decode_handoff, 0, 1024)
        check_range("videos in flight", self.videos_in_flight, 0, 256)
        check_choice("engine start", self.engine_start, get_args(EngineStart))


@dataclass(frozen=True)
class IndexSettings:
    """Everything that decides what an indexing run produces."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    person_tracking: PersonTrackingConfig = field(default_factory=PersonTrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def result_params(self) -> dict[str, Any]:
        """The parameters that change results (runtime choices excluded)."""
        detection = asdict(self.detection)
        # Only the chosen face detector's threshold changes results; a BlazeFace run's parameters stay as they
        # were before the choice existed, so its run key (and every index built with it) stays current.
        if self.detection.face_detector == "blazeface":
            del detection["face_detector"], detection["centerface_score"]
        else:
            del detection["face_score"], detection["face_search"]
        if detection.get("face_search") != "guided":  # the period means nothing to a full search
            del detection["full_search_every_s"]
        if not self.persons_scheduled():  # every sample runs the person detector: results as before the period
            del detection["persons_every_s"]
        params: dict[str, Any] = {
            "sampling": asdict(self.sampling),
            "detection": detection,
            "tracking": asdict(self.tracking),
            "person_tracking": asdict(self.person_tracking),
        }
        # The one runtime choice that changes results beyond rounding: the INT8 person detector's boxes cut
        # person tracks in crowds at other places (engines/int8.py). Other engines keep the key they had. The
        # value names the INT8 recipe's weights (engines.int8.RECIPE): 8-bit weights missed people on CPUs
        # without VNNI, so archives indexed with them are indexed again.
        if self.runtime.engine == "onnxruntime-int8":
            params["person_detector_precision"] = "int8, 7-bit weights"
        return params

    def persons_scheduled(self) -> bool:
        """Whether some samples may skip the person detector (DetectionConfig.persons_every_s): samples can be
        closer together than its period."""
        det, sampling = self.detection, self.sampling
        if not det.detect_persons or det.persons_every_s <= 0:
            return False
        return sampling.mode != "fps" or 1.0 / sampling.fps < det.persons_every_s - 1e-9

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexSettings:
        raw = json.loads(text)
        return cls(
            sampling=SamplingConfig(**raw.get("sampling", {})),
            detection=DetectionConfig(**raw.get("detection", {})),
            tracking=TrackingConfig(**raw.get("tracking", {})),
            person_tracking=PersonTrackingConfig(**raw.get("person_tracking", {})),
            runtime=RuntimeConfig(**_runtime_fields(raw.get("runtime", {}))),
        )


def _runtime_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """RuntimeConfig's fields from stored settings, written by any earlier vidx (`quick_start: true` is the
    engine start `quick`)."""
    fields = dict(raw)
    if "quick_start" in fields:
        fields.setdefault("engine_start", "quick" if fields.pop("quick_start") else "background")
    return fields


def run_key(pipeline_version: str, model_versions: dict[str, str], params: dict[str, Any]) -> str:
    """Short stable key of what produced a result: same key, same results."""
    blob = json.dumps(
        {"pipeline": pipeline_version, "models": model_versions, "params": params}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
