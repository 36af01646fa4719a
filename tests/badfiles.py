"""Builders of good and bad input files for the reliability tests, made with PyAV and numpy at set-up.

Nothing here is committed as a binary: every file is generated from a seed in a few milliseconds.
"""

from __future__ import annotations

import hashlib
import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def noise(n: int, seed: int = 0) -> bytes:
    """`n` bytes that look random and are the same on every run (os.urandom made the bad-input tests flaky:
    about 1 in 230 random blocks opens in FFmpeg as LRC lyrics, 1 in 3,000 as raw H.261/H.263)."""
    return hashlib.shake_256(f"vidx noise {seed}".encode()).digest(n)


def noise_read_as(fmt: str, path: Path, n: int = 30_000, tries: int = 5000) -> Path:
    """Noise that FFmpeg's probe takes for the demuxer `fmt` (first matching seed: the same on every run)."""
    for seed in range(tries):
        path.write_bytes(noise(n, seed))
        try:
            with av.open(str(path)) as container:
                if container.format.name == fmt:
                    return path
        except av.error.FFmpegError:
            pass
    raise AssertionError(f"none of {tries} blocks of noise opens as {fmt} in this FFmpeg")


def frames(width: int, height: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Moving gradients (compress well, cheap to make even at 8K: built from one row and one column)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    x = np.arange(width) * 255 // max(width - 1, 1)
    y = np.arange(height) * 255 // max(height - 1, 1)
    out = []
    for i in range(n):
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[..., 0] = ((x + 8 * i + base[0]) % 256).astype(np.uint8)[None, :]
        rgb[..., 1] = ((y + 5 * i + base[1]) % 256).astype(np.uint8)[:, None]
        rgb[..., 2] = np.uint8(base[2])
        out.append(rgb)
    return out


def write_video(path: Path, *, width: int = 96, height: int = 64, seconds: float = 1.0, fps: int = 10,
                codec: str = "libx264", faststart: bool = True, rotation: int = 0,
                pts_schedule: list[int] | None = None, time_base: Fraction | None = None,
                audio: bool = False, seed: int = 0, container_format: str | None = None) -> Path:
    """An MP4 (or other container by suffix, or `container_format`: "h264" is a bare stream) of a smooth
    gradient; `pts_schedule` gives VFR timestamps."""
    n = len(pts_schedule) if pts_schedule is not None else max(1, round(seconds * fps))
    options = {"movflags": "+faststart"} if faststart and path.suffix == ".mp4" and not container_format else {}
    with av.open(str(path), mode="w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        astream = container.add_stream("aac", rate=16000) if audio else None
        for i, rgb in enumerate(frames(width, height, n, seed)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_schedule is not None:
                frame.pts = pts_schedule[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if astream is not None:
            _mux_audio(container, astream, seconds)
    return path


def _mux_audio(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = 16000
    t = np.arange(int(rate * seconds), dtype=np.float32) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    step = 1024
    for i in range(0, len(tone), step):
        chunk = tone[i:i + step]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), mode="w") as container:
        _mux_audio(container, container.add_stream("aac", rate=16000), seconds)
    return path


def write_no_frames(path: Path) -> Path:
    """A Matroska file whose video track holds no frames at all (only its audio track has packets)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        _mux_audio(container, container.add_stream("aac", rate=16000), 1.0)
    return path


def mp4_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Top-level MP4 boxes: name -> (offset, size)."""
    out, pos = {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        if size < 8:
            break
        out[kind.decode("latin-1")] = (pos, size)
        pos += size
    return out


def truncate_before_moov(good: Path, path: Path) -> Path:
    """A recording cut off before its index was written: moov (at the end) missing."""
    data = good.read_bytes()
    boxes = mp4_boxes(data)
    if "moov" not in boxes or boxes["moov"][0] < boxes["mdat"][0]:
        raise ValueError(f"{good}: expected the moov box after mdat (write without faststart)")
    path.write_bytes(data[:boxes["moov"][0]])
    return path


def truncate_mdat(good: Path, path: Path, keep: float = 0.5) -> Path:
    """An interrupted copy: the index (moov, at the front) is intact, the second half of the frames is gone."""
    data = good.read_bytes()
    boxes = mp4_boxes(data)
    start, size = boxes["mdat"]
    if boxes["moov"][0] > start:
        raise ValueError(f"{good}: expected the moov box before mdat (write with faststart)")
    path.write_bytes(data[:start + int(size * keep)])
    return path


def unknown_codec(good: Path, path: Path) -> Path:
    """An H.264 MP4 whose sample entry claims a codec nobody has ('vdx0'): demuxable, not decodable."""
    data = good.read_bytes()
    entry = data.rfind(b"avc1", 0, data.find(b"avcC"))  # the sample entry, not the ftyp brand
    if entry < 0:
        raise ValueError(f"{good}: no avc1 sample entry")
    path.write_bytes(data[:entry] + b"vdx0" + data[entry + 4:])
    return path


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frames(width, height, 1)[0]).save(buf, format="JPEG")
    return buf.getvalue()
