"""Frame batches, stream facts, sampling, and the choice of decoder."""

from __future__ import annotations

import bisect
import copy
import heapq
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from engines.arrays import Array, array_module
from schemas.config import DeviceChoice, SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream. Width and height are as displayed."""

    path: str
    codec: str
    width: int
    height: int
    rotation: int
    """Degrees clockwise applied to decoded frames so that they display upright (0, 90, 180, 270)."""
    fps: float | None
    duration_s: float | None
    frame_count: int | None


@dataclass
class FrameBatch:
    """Decoded, upright RGB frames of one video with their presentation times."""

    frames: Array
    """N x H x W x 3 uint8 (numpy on the CPU, CuPy on a GPU)."""
    pts_s: np.ndarray
    """N float64: seconds from the stream start, from container PTS (right for variable frame rate)."""
    frame_index: np.ndarray
    """N int64: position of each frame among all the stream's frames in presentation order (frames the
    decoder skipped count too; see `PacketPlan`)."""
    video: VideoInfo = field(repr=False)

    def __post_init__(self) -> None:
        n = len(self.pts_s)
        if self.frames.ndim != 4 or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be N x H x W x 3 uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.frames.shape[0] != n or len(self.frame_index) != n:
            raise ValueError(f"{self.frames.shape[0]} frames, {n} timestamps and {len(self.frame_index)} indexes")
        if self.pts_s.dtype != np.float64:
            raise ValueError("pts_s must be float64")

    def __len__(self) -> int:
        return len(self.pts_s)

    def __repr__(self) -> str:
        where = "cuda" if array_module(self.frames) is not np else "cpu"
        span = f"{self.pts_s[0]:.3f}-{self.pts_s[-1]:.3f}s" if len(self) else "empty"
        return f"FrameBatch({tuple(self.frames.shape)} uint8 on {where}, {span}, video={Path(self.video.path).name})"


class FrameSampler:
    """Decides, from each decoded frame's timestamp, whether it is analysed.

    By rate, samples sit on a fixed grid (0, 1/F, 2/F ...): the first frame at or after each grid
    time is taken, so variable frame rate and dropped frames do not shift later samples.
    """

    TOLERANCE = 1e-3
    """A frame this close before a grid time counts as at it (container time bases round)."""

    def __init__(self, config: SamplingConfig):
        self.config = config
        self._next = 0.0
        self._tolerance = self.TOLERANCE

    def take(self, pts_s: float, is_key: bool) -> bool:
        mode = self.config.mode
        if mode == "every-frame":
            return True
        if mode == "keyframes":
            return is_key
        if pts_s + self._tolerance < self._next:
            return False
        interval = 1.0 / self.config.fps
        steps = int((pts_s + self._tolerance - self._next) // interval) + 1
        self._next += steps * interval
        return True


class PacketPlan:
    """Which demuxed packets a sampling needs decoded, and where each decoded frame sits in the stream.

    Every reference frame must be decoded, since later frames are built from it, but a non-reference
    frame (most B-frames: about half of an x264 or x265 stream with default settings) matters only if it
    is itself sampled. At 2 fps of a 30 fps stream that is 1 in 15, so the decoders skip the rest.
    Whether a packet's frame could be sampled is decided from the packets' timestamps alone, before
    decoding: by `FrameSampler`'s rule, a frame is taken when a grid time lies after the frame before it
    (in presentation order) and at or before the frame itself. Packets arrive in decode order; the frame
    before this one is looked up among the last `WINDOW` packets' timestamps. If it is not there (a
    reordering deeper than the window, a missing timestamp), the packet is decoded: the plan can make a
    decoder do more work than needed, never drop a frame the sampler would take.

    It also gives each decoded frame its index among all the stream's frames in presentation order
    (the number of packets with an earlier timestamp), so frames keep their index when others are skipped.
    """

    WINDOW = 64

    def __init__(self, sampling: SamplingConfig, time_base: float | Fraction, start: int | None):
        self.interval = sampling.interval_s
        """Seconds between samples, or None when the sampling is not by rate (every packet is wanted)."""
        self.time_base = time_base
        self.start = start
        """PTS of the stream's time zero; until known (set by the first decoded frame), every packet is wanted."""
        self._recent: list[float] = []
        self._earlier: list[int] = []
        """Heap of demuxed packets' PTS whose frames have not yet been placed."""
        self._placed = 0
        self._last_index = -1

    def seconds(self, pts: int) -> float:
        """A frame's time from its PTS: seconds since the stream start (the first frame if the container has none)."""
        if self.start is None:
            self.start = pts
        return float((pts - self.start) * self.time_base)

    def packet(self, pts: int | None) -> bool:
        """Record a demuxed packet (decode order); True when its frame could be sampled (decode it even if
        no other frame refers to it)."""
        if pts is None:
            return True
        heapq.heappush(self._earlier, pts)
        if self.interval is None or self.start is None:
            return True
        t = float((pts - self.start) * self.time_base)
        at = bisect.bisect_left(self._recent, t)
        before = self._recent[at - 1] if at else None
        self._recent.insert(at, t)
        if len(self._recent) > self.WINDOW:
            del self._recent[0]
        if before is None:
            return True
        tol, eps = FrameSampler.TOLERANCE, 1e-6
        grid = math.floor((t + tol + eps) / self.interval) * self.interval  # the last grid time the frame reaches
        return grid > before + tol - eps

    def frame_index(self, pts: int | None) -> int:
        """Index of a decoded frame (output order) among all frames of the stream, skipped ones included."""
        if pts is not None:
            earlier = self._earlier
            while earlier and earlier[0] < pts:
                heapq.heappop(earlier)
                self._placed += 1
            index = self._placed
            if earlier and earlier[0] == pts:
                heapq.heappop(earlier)
                self._placed += 1
        else:
            index = self._last_index + 1
        index = max(index, self._last_index + 1)  # damaged timestamps: indexes still grow
        self._last_index = index
        return index


@dataclass
class DecodeStats:
    frames_decoded: int = 0
    """Frames the decoder produced (fewer than the video holds when frames no sample needs were skipped)."""
    frames_in_video: int = 0
    """Packets with data that were demuxed: the video's frames, decoded or not."""
    frames_sampled: int = 0
    seconds: float = 0.0


class Decoder(Protocol):
    """Decodes one video at a time into sampled, upright frame batches."""

    device: Literal["cpu", "cuda"]
    stats: DecodeStats

    def probe(self, path: Path) -> VideoInfo: ...

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]: ...


class DecoderWrapper:
    """A decoder that wraps another: device and statistics are the inner decoder's, and a copy (one per video
    in flight) wraps a copy of it. Subclasses change what `probe` and `batches` do around the inner ones."""

    def __init__(self, inner: Decoder):
        self.inner = inner
        self.device = inner.device

    def rewrap(self, inner: Decoder) -> DecoderWrapper:
        """The same wrapper around another inner decoder."""
        raise NotImplementedError

    def __copy__(self) -> DecoderWrapper:
        return self.rewrap(copy.copy(self.inner))

    @property
    def stats(self) -> DecodeStats:
        return self.inner.stats

    @stats.setter
    def stats(self, value: DecodeStats) -> None:
        self.inner.stats = value

    def probe(self, path: Path) -> VideoInfo:
        return self.inner.probe(path)

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        return self.inner.batches(path, sampling, batch_size)


def open_decoder(device: DeviceChoice, *, threads: int = 0) -> Decoder:
    """NVDEC when a GPU and PyNvVideoCodec are there (or asked for), else PyAV."""
    if device != "cpu":
        try:
            from indexer.decode.nvdec import NvdecDecoder, nvdec_available

            if nvdec_available():
                return NvdecDecoder()
            if device == "gpu":
                log.warning("PyNvVideoCodec or a GPU is missing: decoding on the CPU with PyAV")
        except ImportError as exc:
            if device == "gpu":
                log.warning("NVDEC decoding unavailable (%s): decoding on the CPU with PyAV", exc)
    from indexer.decode.pyav import PyAVDecoder

    return PyAVDecoder(threads=threads)
