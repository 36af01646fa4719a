"""CPU decoding with PyAV (FFmpeg's libavcodec), frame-threaded.

Only the sampled frames are converted to RGB (the colour conversion costs as much as decoding). The
decoder itself skips what no sample needs: in keyframe mode every other frame, at a sampling rate the
non-reference frames that will not be sampled (`PacketPlan`; FFmpeg's `skip_frame`, set per packet).
"""

from __future__ import annotations

import codecs
import functools
import logging
import os
import stat
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from indexer.decode.base import DecodeStats, FrameBatch, FrameSampler, PacketPlan, VideoInfo
from indexer.errors import VideoError
from schemas.config import SamplingConfig

log = logging.getLogger(__name__)

MAX_BAD_PACKETS = 50
"""A stream with more undecodable packets than this is treated as corrupt rather than damaged."""
MAX_VIDEO_PIXELS = 8192 * 8192
"""Larger pictures are refused before decoding: 8K UHD is 33 Mpx; a forged header must not allocate gigabytes."""


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a decoded frame clockwise by `rotation` degrees so that it displays upright."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=-turns)) if turns else rgb


def display_rotation(raw: float | int | None) -> int:
    """Clockwise degrees to apply, from FFmpeg's display-matrix angle (counter-clockwise)."""
    if not raw:
        return 0
    return round(-float(raw) / 90.0) * 90 % 360


def file_state(path: Path) -> tuple[int, int, int]:
    """What tells a rewritten file apart: inode, size, modification time (ns)."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def open_container(path: Path) -> Any:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoError("the file does not exist (deleted or moved?)", path=path) from None
    except OSError as exc:
        raise VideoError(f"cannot read the file: {exc.strerror}", path=path) from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the worker forever
        raise VideoError("not a regular file (a FIFO, device or socket)", path=path)
    if st.st_size == 0:
        raise VideoError("the file is empty (0 bytes)", path=path)
    if not os.access(path, os.R_OK):
        raise VideoError("cannot read the file: permission denied", path=path)
    try:
        # metadata_errors: a damaged title tag must not make the pictures unreadable
        container = av.open(str(path), mode="r", timeout=60.0, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a readable video: {what_it_looks_like(path)} ({ffmpeg_reason(exc)})",
                         path=path) from exc
    except (OSError, UnicodeError) as exc:
        raise VideoError(f"cannot open the file: {exc}", path=path) from exc
    fmt = container.format
    name = str(fmt.name)
    if name.endswith("_pipe") or name in IMAGE_FORMATS:
        container.close()
        raise VideoError(f"a still image ({name.removesuffix('_pipe').upper()}), not a video", path=path)
    if bare_stream(fmt):
        if name in NOISE_PRONE_STREAMS and path.suffix.lower().lstrip(".") not in fmt.extensions:
            container.close()
            raise VideoError(f"not a video file FFmpeg recognises: its bytes pass only for {fmt.long_name}, a bare "
                             "stream without a container, as random data often does (random or corrupt data?)",
                             path=path)
        warn_bare_stream(str(path), fmt.long_name)
    return container


@functools.lru_cache(maxsize=256)
def warn_bare_stream(path: str, stream: str) -> None:
    """Once per file (it is opened more than once: probe, then decode)."""
    log.warning("%s: a bare %s stream without a container: its timestamps are FFmpeg's guess from the "
                "stream's frame rate", path, stream)


IMAGE_FORMATS = frozenset({"image2", "apng", "webp", "bmp", "png", "tiff"})
"""FFmpeg demuxers of still images (plus every `*_pipe` one): a photo named .mp4 is refused, not indexed."""

NOISE_PRONE_STREAMS = frozenset({"h261", "h263", "vvc"})
"""Bare-stream demuxers whose probes accept random data: of 60,000 blocks of noise of 0.1-30 kB, 20 opened as
raw H.263 or H.261 (and one other block as H.266) and even decoded a frame of noise; none as H.264, HEVC or
MPEG-4, whose probes ask for more structure (tools/ffmpeg_noise_probe.py,
docs/measurements/ffmpeg_noise_probe_cpu_2core.txt). Such a file is refused unless its name says it is that
stream."""


def bare_stream(fmt: Any) -> bool:
    """FFmpeg reads the file as an elementary stream with no container (and so no timestamps)."""
    return bool(fmt.flags & av.format.Flags.no_timestamps.value)


def what_it_looks_like(path: Path) -> str:
    """A guess, from the first bytes, at what a file FFmpeg cannot open is: for the error message."""
    try:
        head = file_head(path)
    except OSError:
        return "the file cannot be read"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV whose index (moov box) is missing or damaged: an interrupted recording or copy?"
    if head[:3] == b"\xff\xd8\xff":
        return "a damaged JPEG image"
    if head[:4] in (b"RIFF", b"\x1aE\xdf\xa3", b"OggS") or head[:3] == b"FLV":
        return "a damaged or truncated container"
    text = utf8_text(head)
    if text is None:
        return "not a video file FFmpeg recognises (random or corrupt data?)"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file, not a video"
    return "not a video file FFmpeg recognises"


def file_head(path: Path, n: int = 512) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


def looks_like_text(path: Path) -> bool:
    """UTF-8, UTF-16 with its byte-order mark, or a single-byte encoding with few control characters (random
    bytes have ~12% of them in Windows-1252)."""
    try:
        head = file_head(path)
    except OSError:
        return True  # unreadable now: say what FFmpeg read, not a guess at the bytes
    if utf8_text(head) is not None or head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return True
    single = head.decode("cp1252", errors="replace")
    return sum(c.isprintable() or c in "\r\n\t" for c in single) >= 0.97 * len(single)


def utf8_text(head: bytes) -> str | None:
    """The bytes as UTF-8 (a character cut off at the end is fine), or None when they are not UTF-8."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return None


TEXT_FORMATS = frozenset({
    "aqtitle", "ass", "jacosub", "lrc", "microdvd", "mpl2", "mpsub", "pjs", "realtext", "sami", "scc", "srt", "stl",
    "subviewer", "subviewer1", "vplayer", "webvtt",
})
"""FFmpeg's demuxers of plain-text subtitles: the LRC one accepts about 1 in 230 blocks of random bytes."""


def ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(": '", 1)[0]


def video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        fmt = container.format
        if fmt.name in TEXT_FORMATS and not looks_like_text(path):
            raise VideoError(f"not a video file FFmpeg recognises: binary data that FFmpeg can only guess at as "
                             f"{fmt.long_name} (random or corrupt data?)", path=path)
        kinds = sorted({s.type for s in container.streams}) or ["no streams at all"]
        raise VideoError(f"no video stream (the file has {', '.join(kinds)}; FFmpeg reads it as {fmt.long_name})",
                         path=path)
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
    codec = getattr(getattr(ctx, "codec", None), "canonical_name", None) or ctx.name  # "av1", not "libdav1d"
    return VideoInfo(path=str(path), codec=str(codec), width=w, height=h, rotation=rotation,
                     fps=float(rate) if rate else None, duration_s=duration,
                     frame_count=int(stream.frames) if stream.frames else None)


def header_duration(path: str) -> float | None:
    """A video's length from its container header (no decoding); None when the header does not say or the file
    cannot be opened (an unreadable file fails where it is indexed, with the reason)."""
    try:
        with av.open(path) as container:
            return container.duration / 1e6 if container.duration else None
    except Exception:
        return None


class PyAVDecoder:
    device: Literal["cpu", "cuda"] = "cpu"

    def __init__(self, threads: int = 0, *, max_pixels: int = MAX_VIDEO_PIXELS, skip_unsampled: bool = True):
        self.threads = threads
        self.max_pixels = max_pixels
        self.skip_unsampled = skip_unsampled
        """At a sampling rate, leave non-reference frames that will not be sampled undecoded (off: decode all)."""
        self.stats = DecodeStats()

    def _check_size(self, info: VideoInfo, path: Path) -> None:
        if info.width * info.height > self.max_pixels:
            raise VideoError(f"the video is {info.width}x{info.height} pixels, over the limit of "
                             f"{self.max_pixels:,} per frame", path=path)

    def probe(self, path: Path) -> VideoInfo:
        with open_container(path) as container:
            return self.probe_open(path, container, video_stream(container, path))

    def probe_open(self, path: Path, container: Any, stream: Any) -> VideoInfo:
        """Stream facts of an open container; decodes its first frame for the rotation (size checked first)."""
        self._check_size(stream_info(path, container, stream), path)  # before a frame is decoded
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
        before = file_state(path) if path.exists() else None
        demuxed, cut_off = 0, False
        with open_container(path) as container:
            stream = video_stream(container, path)
            info = stream_info(path, container, stream)
            self._check_size(info, path)
            expected = info.frame_count or 0  # the index's count: PyAV answers only while the container is open
            ctx = stream.codec_context
            ctx.thread_type = "AUTO"
            ctx.thread_count = self.threads
            bare = bare_stream(container.format)  # no timestamps: frames are timed by counting them all
            if sampling.mode == "keyframes" and not bare:
                ctx.skip_frame = "NONKEY"
            skipping = self.skip_unsampled and sampling.mode == "fps"
            skip = "DEFAULT"
            time_base: Fraction = stream.time_base
            plan = PacketPlan(sampling, float(time_base), stream.start_time)
            sampler = FrameSampler(sampling)
            frames: list[np.ndarray] = []
            pts: list[float] = []
            index: list[int] = []
            last_t: float | None = None  # the previous decoded frame's time, sampled or not
            bad = 0
            for packet in self._packets(container, stream, path):
                demuxed += packet.size > 0
                if packet.is_corrupt and packet.pos is not None and before is not None:
                    cut_off |= packet.pos + packet.size >= before[1]  # a packet cut short by the end of the file
                wanted = plan.packet(packet.pts) or packet.size == 0
                if skipping and skip != (mode := "DEFAULT" if wanted else "NONREF"):
                    ctx.skip_frame = skip = mode  # NONREF: FFmpeg drops the packet if no frame refers to its frame
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise VideoError(f"too many undecodable packets ({bad}): {ffmpeg_reason(exc)}",
                                         path=path) from exc
                    continue
                for frame in decoded:
                    stats.frames_decoded += 1
                    raw_pts = frame.pts if frame.pts is not None else frame.dts
                    n = plan.frame_index(raw_pts)
                    if raw_pts is None:
                        t = last_t + 1.0 / (info.fps or 30.0) if last_t is not None else 0.0
                    else:
                        t = plan.seconds(raw_pts)
                    last_t = t
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
        stats.frames_in_video = demuxed
        self._check_unchanged(path, before)
        if expected and demuxed < expected:
            raise VideoError(f"the file is truncated: it holds {demuxed} of the {expected} frames its index lists "
                             "(an interrupted copy or recording?)", path=path)
        if cut_off:
            raise VideoError("the file is truncated: it ends in the middle of a frame (an interrupted copy or "
                             "recording?)", path=path)
        if demuxed == 0:
            raise VideoError("the video stream holds no frames (an empty recording?)", path=path)
        if stats.frames_decoded == 0:
            raise VideoError("the video stream has no decodable frames" + (f" ({bad} bad packets)" if bad else ""),
                             path=path)
        if bad:
            log.warning("%s: skipped %d undecodable packets", path, bad)

    @staticmethod
    def _check_unchanged(path: Path, before: tuple[int, int, int] | None) -> None:
        """Results must describe one version of the file: one replaced or rewritten while being read fails."""
        try:
            after = file_state(path)
        except FileNotFoundError:
            raise VideoError("the file was deleted while it was being read", path=path) from None
        if after != before:
            raise VideoError("the file changed while it was being read (rewritten during the job); "
                             "the next run indexes the new version", path=path)

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
