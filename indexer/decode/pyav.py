"""CPU decoding with PyAV (FFmpeg's libavcodec), frame-threaded.

Only the sampled frames are converted to RGB (the colour conversion costs as much as decoding); in
keyframe mode the decoder itself skips every other frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from indexer.decode.base import DecodeStats, FrameBatch, FrameSampler, VideoInfo
from indexer.errors import VideoError
from schemas.config import SamplingConfig

log = logging.getLogger(__name__)

MAX_BAD_PACKETS = 50
"""A stream with more undecodable packets than this is treated as corrupt rather than damaged."""


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a decoded frame clockwise by `rotation` degrees so that it displays upright."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=-turns)) if turns else rgb


def display_rotation(raw: float | int | None) -> int:
    """Clockwise degrees to apply, from FFmpeg's display-matrix angle (counter-clockwise)."""
    if not raw:
        return 0
    return int(round(-float(raw) / 90.0)) * 90 % 360


def open_container(path: Path) -> Any:
    if not path.exists():
        raise VideoError("the file does not exist (deleted or moved?)", path=path)
    if path.stat().st_size == 0:
        raise VideoError("the file is empty (0 bytes)", path=path)
    try:
        return av.open(str(path), mode="r", timeout=60.0)
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a readable video container: {ffmpeg_reason(exc)}", path=path) from exc
    except (OSError, UnicodeError) as exc:
        raise VideoError(f"cannot open the file: {exc}", path=path) from exc


def ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(": '", 1)[0]


def video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams at all"]
        raise VideoError(f"no video stream (the file has {', '.join(kinds)})", path=path)
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.name is None:
        raise VideoError("the video codec is not supported by this FFmpeg build", path=path)
    return stream


def stream_info(path: Path, container: Any, stream: Any, rotation: int = 0) -> VideoInfo:
    """Stream facts; the rotation comes from a decoded frame's display matrix (PyAV has no stream one)."""
    ctx = stream.codec_context
    w, h = int(ctx.width or 0), int(ctx.height or 0)
    if rotation in (90, 270):
        w, h = h, w
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return VideoInfo(path=str(path), codec=str(ctx.name), width=w, height=h, rotation=rotation,
                     fps=float(rate) if rate else None, duration_s=duration,
                     frame_count=int(stream.frames) if stream.frames else None)


class PyAVDecoder:
    device: Literal["cpu", "cuda"] = "cpu"

    def __init__(self, threads: int = 0):
        self.threads = threads
        self.stats = DecodeStats()

    def probe(self, path: Path) -> VideoInfo:
        with open_container(path) as container:
            stream = video_stream(container, path)
            rotation = 0
            try:
                first = next(container.decode(stream), None)
                rotation = display_rotation(first.rotation) if first is not None else 0
            except av.error.FFmpegError:
                pass
            return stream_info(path, container, stream, rotation)

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        started = time.monotonic()
        stats = self.stats = DecodeStats()
        with open_container(path) as container:
            stream = video_stream(container, path)
            info = stream_info(path, container, stream)
            ctx = stream.codec_context
            ctx.thread_type = "AUTO"
            ctx.thread_count = self.threads
            if sampling.mode == "keyframes":
                ctx.skip_frame = "NONKEY"
            time_base: Fraction = stream.time_base
            start = stream.start_time if stream.start_time is not None else None
            sampler = FrameSampler(sampling)
            frames: list[np.ndarray] = []
            pts: list[float] = []
            index: list[int] = []
            bad = 0
            for packet in self._packets(container, stream, path):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise VideoError(f"too many undecodable packets ({bad}): {ffmpeg_reason(exc)}", path=path) from exc
                    continue
                for frame in decoded:
                    n = stats.frames_decoded
                    stats.frames_decoded += 1
                    raw_pts = frame.pts if frame.pts is not None else frame.dts
                    if raw_pts is None:
                        t = pts[-1] + 1.0 / (info.fps or 30.0) if pts else 0.0
                    else:
                        if start is None:
                            start = raw_pts
                        t = float((raw_pts - start) * time_base)
                    if not sampler.take(t, bool(frame.key_frame)):
                        continue
                    rotation = display_rotation(frame.rotation)
                    if rotation != info.rotation:
                        info = stream_info(path, container, stream, rotation)
                    frames.append(upright(frame.to_ndarray(format="rgb24"), info.rotation))
                    pts.append(t)
                    index.append(n)
                    if len(frames) >= batch_size:
                        yield self._batch(frames, pts, index, info)
                        stats.frames_sampled += len(frames)
                        frames, pts, index = [], [], []
            if frames:
                stats.frames_sampled += len(frames)
                yield self._batch(frames, pts, index, info)
        stats.seconds = time.monotonic() - started
        if stats.frames_decoded == 0:
            raise VideoError("the video stream has no decodable frames" + (f" ({bad} bad packets)" if bad else ""),
                             path=path)
        if bad:
            log.warning("%s: skipped %d undecodable packets", path, bad)

    @staticmethod
    def _packets(container: Any, stream: Any, path: Path) -> Iterator[Any]:
        """Packets of the stream, then a flush packet; demuxing errors end the stream, as a player does."""
        demux = container.demux(stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                log.warning("%s: demuxing stopped early: %s", path, ffmpeg_reason(exc))
                return
            yield packet

    @staticmethod
    def _batch(frames: list[np.ndarray], pts: list[float], index: list[int], info: VideoInfo) -> FrameBatch:
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:  # resolution change mid-stream: pad to the largest, top-left aligned
            h = max(s[0] for s in shapes)
            w = max(s[1] for s in shapes)
            frames = [np.pad(f, ((0, h - f.shape[0]), (0, w - f.shape[1]), (0, 0))) for f in frames]
        return FrameBatch(np.stack(frames), np.asarray(pts, np.float64), np.asarray(index, np.int64), info)
