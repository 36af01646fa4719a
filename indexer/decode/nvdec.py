"""NVDEC decoding through PyNvVideoCodec: frames stay in GPU memory from the decoder to the engines.

Packets come from PyNvVideoCodec's demuxer and go to its core decoder, which writes NV12 surfaces
on our own CUDA stream. Only sampled frames are converted (NV12 -> upright RGB, one kernel per frame
on the same stream, so the decoder cannot reuse a surface before the kernel has read it). What no sample
needs never reaches the decoder: in key-frame mode every packet but the key ones, at a sampling rate the
non-reference pictures (most B-frames) that will not be sampled (`PacketPlan`, `ReferenceScanner`).
Other frames are decoded (later frames depend on them) and dropped.

Decoders are kept for the next video of the same kind (`DECODERS`): a decoder that has been flushed at
the end of one file decodes the next file of the same codec, chroma format, bit depth and size exactly as
a fresh one does (frames and PTS compared on an H100), without setting up NVDEC again (docs/gpu.md,
"What the GPU path does").

Timestamps: each frame's PTS in the stream time base, minus the stream's start time, as in the
PyAV decoder. Rotation comes from the container (read with PyAV, which costs one CPU frame decode).
A codec this GPU's NVDEC cannot decode falls back to PyAV on the CPU, and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engines.arrays import Array, cupy_module, require_cupy
from engines.cuda_graphs import CAPTURE_GATE
from engines.streams import DECODER_STREAMS
from indexer.decode.base import DecodeStats, FrameBatch, FrameSampler, PacketPlan, VideoInfo
from indexer.decode.bitstream import ReferenceScanner
from indexer.errors import VideoError
from schemas.config import SamplingConfig

log = logging.getLogger(__name__)


@functools.cache
def _nvc() -> Any:
    import PyNvVideoCodec as nvc

    return nvc


def nvdec_available(gpu_id: int = 0) -> bool:
    """PyNvVideoCodec imports, CuPy sees a GPU, and NVDEC answers for H.264."""
    if cupy_module() is None:
        return False
    try:
        nvc = _nvc()
        caps = nvc.GetDecoderCaps(gpuid=gpu_id, codec=nvc.cudaVideoCodec.H264)
    except Exception as exc:  # ImportError, or a driver without NVDEC
        log.info("NVDEC unavailable: %s", exc)
        return False
    return bool(caps.get("supported", 1))


@functools.cache
def decoder_supports(gpu_id: int, codec: Any, chroma: Any, bitdepth: int) -> bool:
    """Whether this GPU's NVDEC decodes the stream kind; asked once per kind (each query costs ~0.2 s)."""
    caps = _nvc().GetDecoderCaps(gpuid=gpu_id, codec=codec, chromaformat=chroma, bitdepth=bitdepth)
    return bool(caps.get("supported", 0))


def _plane(view: Any) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(pointer, shape, strides) of a plane from its CUDA array interface (lists turned to tuples)."""
    cai = view.__cuda_array_interface__
    shape = tuple(int(v) for v in cai["shape"])
    strides = cai.get("strides")
    if strides is None:  # C-contiguous
        itemsize = np.dtype(cai["typestr"]).itemsize
        acc, out = itemsize, []
        for dim in reversed(shape):
            out.append(acc)
            acc *= dim
        strides = tuple(reversed(out))
    return int(cai["data"][0]), shape, tuple(int(v) for v in strides)


def nv12_planes(frame: Any, height: int, width: int) -> tuple[int, int, int, int]:
    """(y_ptr, uv_ptr, y_pitch, uv_pitch) of a decoded NV12 frame.

    PyNvVideoCodec hands NV12 either as two planes (luma, interleaved chroma) or as one
    (1.5 H) x W plane; both layouts are accepted.
    """
    planes = frame.cuda()
    if len(planes) >= 2:
        y_ptr, _, y_strides = _plane(planes[0])
        uv_ptr, _, uv_strides = _plane(planes[1])
        return y_ptr, uv_ptr, y_strides[0], uv_strides[0]
    ptr, shape, strides = _plane(planes[0])
    if shape[0] < height * 3 // 2:
        raise VideoError(f"unexpected NV12 layout from NVDEC: shape {shape} for {width}x{height}")
    return ptr, ptr + strides[0] * height, strides[0], strides[0]


MAX_IDLE_DECODERS = 16
"""Flushed decoders kept for later videos, all kinds together; the least recently used go first."""


@dataclass
class LentDecoder:
    """A PyNvVideoCodec core decoder and the CUDA stream it writes its surfaces on (made together)."""

    decoder: Any
    stream: Any
    key: tuple[Any, ...]
    flushed: bool = False
    """Set once the demuxer's last (empty) packet went through: nothing of this file is left inside."""
    set_up: bool = False
    """Whether it has put out a frame: NVDEC's decoder is made inside `Decode`, from the first sequence header."""

    def decode(self, packet: Any) -> list[Any]:
        """The frames `packet` completes. Until the decoder is set up, no CUDA graph is recorded meanwhile
        (setting NVDEC up may synchronise the device: engines.cuda_graphs.CaptureGate)."""
        if self.set_up:
            return self.decoder.Decode(packet)
        with CAPTURE_GATE.apart():
            frames = self.decoder.Decode(packet)
        self.set_up = bool(frames)
        return frames


class DecoderPool:
    """NVDEC decoders lent for one video and taken back, to decode the next video of the same kind.

    Setting a decoder up (its parser, NVDEC session and surfaces, made on the first sequence header)
    is per-video work that does not depend on the video: reusing flushed decoders took key-frame
    decoding of 42 short clips from 3.536 to 1.289 s and decoding every frame from 2,953 to 3,343 fps
    (H100, tools/nvdec_reuse_probe.py, docs/measurements/nvdec_decoder_reuse_h100.jsonl).
    A decoder goes back only when its file was decoded to the end (the end-of-stream packet flushed
    it) at the size it was lent for; after an error or an early stop it is dropped. The kind includes
    the codec because a decoder fed another codec's packets outputs nothing and raises nothing, and the
    stream's parameter sets (a digest of the container's codec extradata: SPS/PPS/VPS): a decoder sets
    its number of decode surfaces from the first stream it sees, and for a later stream of the same size
    that needs more of them (more reference frames) NVIDIA's decoder class keeps the old number rather
    than reconfigure. Files from one camera or encoder setting share parameter sets; others get their
    own decoders.
    """

    def __init__(self, max_idle: int = MAX_IDLE_DECODERS):
        self.max_idle = max_idle
        self._idle: OrderedDict[int, LentDecoder] = OrderedDict()
        self._lock = threading.Lock()
        self.created = 0
        self.reused = 0

    @contextlib.contextmanager
    def lend(self, gpu_id: int, codec: Any, chroma: Any, bitdepth: int, height: int, width: int,
             parameter_sets: str = "") -> Iterator[LentDecoder]:
        key = (gpu_id, str(codec), str(chroma), bitdepth, height, width, parameter_sets)
        with self._lock:
            lent = next((d for d in reversed(self._idle.values()) if d.key == key), None)
            if lent is not None:
                del self._idle[id(lent)]
                self.reused += 1
        if lent is None:
            stream = DECODER_STREAMS.take()  # given back when the decoder is dropped: CuPy's cache is per stream
            try:
                with CAPTURE_GATE.apart():
                    decoder = _nvc().CreateDecoder(gpuid=gpu_id, codec=codec, cudacontext=0,
                                                   cudastream=stream.ptr, usedevicememory=True)
            except BaseException:
                DECODER_STREAMS.give(stream)
                raise
            lent = LentDecoder(decoder, stream, key)
            with self._lock:
                self.created += 1
        lent.flushed = False
        try:
            with lent.stream:
                yield lent
        finally:
            size = (lent.decoder.GetHeight(), lent.decoder.GetWidth()) if lent.flushed else None
            dropped = [lent]
            if size == (height, width):
                with self._lock:
                    self._idle[id(lent)] = lent
                    dropped = [self._idle.popitem(last=False)[1] for _ in range(len(self._idle) - self.max_idle)]
            for old in dropped:
                self._drop(old)

    @staticmethod
    def _drop(lent: LentDecoder) -> None:
        lent.stream.synchronize()
        with CAPTURE_GATE.apart():  # the NVDEC session goes now, before its stream is lent to anyone else
            del lent.decoder
        DECODER_STREAMS.give(lent.stream)

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._idle.values())
            self._idle.clear()
        for lent in dropped:
            self._drop(lent)


DECODERS = DecoderPool()
"""The process's decoders (decoder threads come and go with videos; decoders stay)."""


@functools.cache
def _frame_buffer_stream() -> Any:
    cp = require_cupy()
    return cp.cuda.Stream(non_blocking=True)


def frame_buffer(shape: tuple[int, ...]) -> Array:
    """A uint8 device array for a batch of decoded frames, from CuPy's cache of one stream shared by all decoders.

    CuPy keeps freed blocks per stream (the stream current at allocation). Allocated on each decoder's
    stream, a batch freed by the models could only be reused by later videos on that same stream, and
    each stream would keep its own high-water mark of batches. Allocated on one stream they are shared.
    Nothing runs on that stream: reuse is safe because every user of a batch has synchronised before
    dropping it (the decoder before handing it over, the models at the end of a step).
    """
    cp = require_cupy()
    with _frame_buffer_stream():
        return cp.empty(shape, cp.uint8)


def lend_decoder(gpu_id: int, demuxer: Any, parameter_sets: str) -> contextlib.AbstractContextManager[LentDecoder]:
    """A decoder from the process's pool for the demuxer's stream (codec, chroma, depth, size, parameter sets)."""
    return DECODERS.lend(gpu_id, demuxer.GetNvCodecId(), demuxer.ChromaFormat(), demuxer.BitDepth(),
                         demuxer.Height(), demuxer.Width(), parameter_sets)


def parameter_sets_digest(extradata: bytes | None) -> str:
    """What tells streams with different parameter sets apart: a digest of the codec's extradata."""
    return hashlib.sha1(extradata or b"", usedforsecurity=False).hexdigest()[:16]


PACKET_HEAD_BYTES = 512
"""Bytes of a packet read for its first slice's NAL header (parameter sets and SEI come first; a packet
whose slice starts later is decoded, never dropped)."""


def _packet_head(packet: Any) -> bytes:
    """The first bytes of a demuxed packet (host memory owned by PyNvVideoCodec's demuxer)."""
    return ctypes.string_at(packet.bsl_data, min(int(packet.bsl), PACKET_HEAD_BYTES))


def decode_frames_only(path: Path, gpu_id: int = 0) -> int:
    """Decode every frame of the file with NVDEC and drop it: the decoder's own speed (benchmarks)."""
    from indexer.decode.pyav import open_container, video_stream

    with open_container(path) as container:  # headers only, for the parameter sets: no frame is decoded
        parameter_sets = parameter_sets_digest(video_stream(container, path).codec_context.extradata)
    demuxer = _nvc().CreateDemuxer(filename=str(path))
    n = 0
    with lend_decoder(gpu_id, demuxer, parameter_sets) as lent:
        for packet in demuxer:
            n += len(lent.decode(packet))
        lent.flushed = True
        lent.stream.synchronize()
    return n


class NvdecDecoder:
    """One video at a time on one GPU; run several instances (threads) to use several NVDEC engines."""

    device: Literal["cpu", "cuda"] = "cuda"

    def __init__(self, gpu_id: int = 0, *, cpu_threads: int = 0, skip_unsampled: bool = True):
        self.gpu_id = gpu_id
        self.cpu_threads = cpu_threads
        self.skip_unsampled = skip_unsampled
        """At a sampling rate, keep non-reference pictures that will not be sampled from NVDEC (off: decode all)."""
        self.stats = DecodeStats()
        self.fell_back: str | None = None
        """Why the last video was decoded on the CPU instead (None when NVDEC did it)."""

    def probe(self, path: Path) -> VideoInfo:
        from indexer.decode.pyav import PyAVDecoder

        return PyAVDecoder().probe(path)

    def _container(self, path: Path) -> tuple[VideoInfo, Fraction | None, int | None, bool | None, bytes, bool]:
        """Stream facts, time base, start PTS, colour matrix (True = BT.709), the codec's extradata (the
        parameter sets) and whether it is a bare stream without a container, from the container (PyAV).

        One open, one frame decoded on one CPU thread (the rotation is only on decoded frames): a
        frame-threaded FFmpeg decoder would start and stop a thread pool per video for nothing.
        """
        from indexer.decode.pyav import PyAVDecoder, bare_stream, open_container, video_stream

        with open_container(path) as container:
            stream = video_stream(container, path)
            stream.codec_context.thread_count = 1
            info = PyAVDecoder().probe_open(path, container, stream)
            space = int(getattr(stream.codec_context, "colorspace", 2) or 2)
            bt709 = True if space == 1 else False if space in (5, 6) else None  # 2: unspecified
            return (info, stream.time_base, stream.start_time, bt709,
                    bytes(stream.codec_context.extradata or b""), bare_stream(container.format))

    def _supported(self, demuxer: Any) -> str | None:
        """None when NVDEC decodes this stream, else the reason it cannot."""
        try:
            codec, chroma, depth = demuxer.GetNvCodecId(), demuxer.ChromaFormat(), demuxer.BitDepth()
            supported = decoder_supports(self.gpu_id, codec, chroma, depth)
        except Exception as exc:
            return f"NVDEC does not know this codec ({exc})"
        if not supported:
            return f"NVDEC on this GPU does not decode {codec} ({depth}-bit)"
        if depth != 8:
            return f"{depth}-bit video is decoded on the CPU (vidx converts 8-bit NV12 only)"
        return None

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        from engines import cuda_ops

        require_cupy()
        nvc = _nvc()
        started = time.monotonic()
        self.fell_back = None
        info, time_base, start, bt709, extradata, bare = self._container(path)
        if bare:  # PyAV times its frames by counting them (indexer/decode/pyav.py)
            yield from self._on_cpu(path, sampling, batch_size, "a bare stream without timestamps")
            return
        try:
            demuxer = nvc.CreateDemuxer(filename=str(path))
        except Exception as exc:
            raise VideoError(f"NVDEC's demuxer cannot open the file: {exc}", path=path) from exc
        reason = self._supported(demuxer)
        if reason is not None:
            yield from self._on_cpu(path, sampling, batch_size, reason)
            return
        stats = self.stats = DecodeStats()
        tb = time_base or Fraction(demuxer.GetTimebaseNum(), demuxer.GetTimebaseDen())
        plan = PacketPlan(sampling, tb, start)
        sampler = FrameSampler(sampling)
        key_only = sampling.mode == "keyframes"
        scanner = ReferenceScanner(info.codec, extradata) if self.skip_unsampled and sampling.mode == "fps" else None
        buf: Array | None = None
        pts: list[float] = []
        index: list[int] = []
        with lend_decoder(self.gpu_id, demuxer, parameter_sets_digest(extradata)) as lent:
            stream = lent.stream
            for frame, coded_h, coded_w in self._decoded_frames(path, demuxer, lent, plan, key_only, scanner, stats):
                stats.frames_decoded += 1
                raw = int(frame.getPTS())
                n = plan.frame_index(raw)
                t = plan.seconds(raw)
                if not sampler.take(t, key_only):
                    continue
                shape = (coded_w, coded_h, 3) if info.rotation in (90, 270) else (coded_h, coded_w, 3)
                if buf is not None and tuple(buf.shape[1:]) != shape:  # resolution change: new batch
                    stats.frames_sampled += len(pts)
                    yield self._batch(stream, buf[:len(pts)], pts, index, info)
                    buf, pts, index = None, [], []
                if buf is None:
                    buf = frame_buffer((batch_size, *shape))
                y_ptr, uv_ptr, y_pitch, uv_pitch = nv12_planes(frame, coded_h, coded_w)
                cuda_ops.nv12_to_rgb(y_ptr, uv_ptr, y_pitch, uv_pitch, coded_h, coded_w,
                                     rotation=info.rotation, bt709=bt709, out=buf[len(pts)])
                pts.append(t)
                index.append(n)
                if len(pts) == batch_size:
                    yield self._batch(stream, buf, pts, index, info)
                    stats.frames_sampled += len(pts)
                    buf, pts, index = None, [], []
            if pts and buf is not None:
                stats.frames_sampled += len(pts)
                yield self._batch(stream, buf[:len(pts)], pts, index, info)
        stats.seconds = time.monotonic() - started
        if stats.frames_decoded == 0:
            raise VideoError("the video stream has no decodable frames", path=path)

    @staticmethod
    def _decoded_frames(path: Path, demuxer: Any, lent: LentDecoder, plan: PacketPlan, key_only: bool,
                        scanner: ReferenceScanner | None, stats: DecodeStats) -> Iterator[tuple[Any, int, int]]:
        """(frame, height, width) of each decoded frame: packets from the demuxer into PyNvVideoCodec's core
        decoder, less those no sample needs (key frames only: all others; with a `scanner`: non-reference
        pictures the plan says will not be sampled). The demuxer's last packet is empty: it flushes the
        decoder, which may then decode another file."""
        for packet in demuxer:
            if packet.bsl:
                stats.frames_in_video += 1
                wanted = plan.packet(getattr(packet, "pts", None))
                if key_only and not packet.key:
                    continue
                if not wanted and scanner is not None and scanner.droppable(_packet_head(packet)):
                    continue
            try:
                decoded = lent.decode(packet)
            except Exception as exc:
                raise VideoError(f"NVDEC failed: {exc}", path=path) from exc
            for frame in decoded:
                yield frame, lent.decoder.GetHeight(), lent.decoder.GetWidth()
        lent.flushed = True

    @staticmethod
    def _batch(stream: Any, frames: Array, pts: list[float], index: list[int], info: VideoInfo) -> FrameBatch:
        stream.synchronize()  # the frames are complete before another thread's stream reads them
        return FrameBatch(frames, np.asarray(pts, np.float64), np.asarray(index, np.int64), info)

    def _on_cpu(self, path: Path, sampling: SamplingConfig, batch_size: int, reason: str) -> Iterator[FrameBatch]:
        from indexer.decode.pyav import PyAVDecoder

        log.warning("%s: %s; decoding on the CPU with PyAV", path, reason)
        self.fell_back = reason
        cpu = PyAVDecoder(threads=self.cpu_threads)
        try:
            yield from cpu.batches(path, sampling, batch_size)
        finally:
            self.stats = cpu.stats
