"""Frame batches, stream facts, sampling, and the choice of decoder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    """N int64: position of each frame in decode output order, counting every decoded frame."""
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

    def __init__(self, config: SamplingConfig):
        self.config = config
        self._next = 0.0
        self._tolerance = 1e-3

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


@dataclass
class DecodeStats:
    frames_decoded: int = 0
    frames_sampled: int = 0
    seconds: float = 0.0


class Decoder(Protocol):
    """Decodes one video at a time into sampled, upright frame batches."""

    device: Literal["cpu", "cuda"]
    stats: DecodeStats

    def probe(self, path: Path) -> VideoInfo: ...

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]: ...


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
