"""Short videos made from real photos of real people, with exact ground truth of who appears when.

Tests of the indexer and the README demo need footage whose answer is known to the frame. Each
video is a moving, non-repeating background (no face-like shapes) over which photos are pasted
opaque and appear abruptly, so "who is visible" changes only between two frames and the truth is
the PTS of the first and last frame showing each photo. Frames are composed directly in BT.709
limited-range YUV 4:2:0 (tagged as such), which spares an RGB->YUV conversion per frame and leaves
no doubt about how players should show the colours.

The `test` preset covers what trips decoders: H.264 and HEVC, variable frame rate (true PTS far
from frame_index / fps) and a sideways-stored video with display-matrix rotation. `demo` is bigger
(1280x720, ~46 s). The photo `obama2` is used nowhere: it is the query photo ("find this person").
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image

from engines.sources import write_atomic

Preset = Literal["test", "demo", "bench"]
Codec = Literal["h264", "hevc"]
Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
Rect = tuple[int, int, int, int]

QUERY_PHOTO = "obama2"
"""Reserved for searching: a photo of a person in the archive that the archive itself never shows."""
TRUTH_FORMAT = "vidx-sample-truth"
TRUTH_VERSION = 1
VFR_TIME_BASE = Fraction(1, 90000)

_ENCODERS: dict[Codec, str] = {"h264": "libx264", "hevc": "libx265"}
_ENCODER_SPEED: dict[Preset, dict[Codec, str]] = {
    "test": {"h264": "veryfast", "hevc": "ultrafast"},
    "demo": {"h264": "superfast", "hevc": "ultrafast"},
    "bench": {"h264": "veryfast", "hevc": "ultrafast"},
}
_BT709 = 1
_LIMITED_RANGE = 1
_KR, _KB = 0.2126, 0.0722


@dataclass(frozen=True)
class Framing:
    """Who a photo shows and the head-and-shoulders part of it that gets pasted.

    obama3 and biden are full-length shots whose faces are a tenth of the photo's height; cropping
    keeps every pasted face well above the detector's minimum size at 640x360.
    """

    person: str
    faces: int
    crop: tuple[float, float, float, float]
    """left, top, right, bottom as fractions of the photo."""


FRAMINGS: dict[str, Framing] = {
    "obama": Framing("obama", 1, (0.05, 0.0, 0.95, 0.62)),
    "obama3": Framing("obama", 1, (0.14, 0.03, 0.86, 0.47)),
    "biden": Framing("biden", 1, (0.0, 0.0, 1.0, 0.42)),
    "astronaut": Framing("astronaut", 1, (0.1, 0.0, 0.8, 0.66)),
    "t1": Framing("t1_group", 6, (0.0, 0.0, 1.0, 0.62)),
}


@dataclass(frozen=True)
class Appearance:
    """One photo on screen: start_s and end_s are the PTS (seconds) of the first and last frame showing it.

    person is the identity ("t1_group" for the six-person photo), photo the photo's name.
    """

    person: str
    photo: str
    start_s: float
    end_s: float
    faces: int = 1


@dataclass(frozen=True)
class SampleVideo:
    """A built video. width and height are as displayed; rotation is the display-matrix angle written."""

    name: str
    path: Path
    codec: str
    width: int
    height: int
    fps: float | None
    duration_s: float
    vfr: bool
    rotation: int
    appearances: tuple[Appearance, ...]


@dataclass(frozen=True)
class Shot:
    """A photo on screen from start_s to end_s (inclusive), its centre and height moving linearly.

    Positions are fractions of the displayed frame; height is a fraction of the frame height.
    """

    photo: str
    start_s: float
    end_s: float
    centre_from: tuple[float, float]
    centre_to: tuple[float, float]
    height_from: float
    height_to: float


@dataclass(frozen=True)
class Run:
    """Consecutive frames at one rate; several runs at different rates make a VFR video."""

    duration_s: float
    fps: int


@dataclass(frozen=True)
class VideoPlan:
    name: str
    codec: Codec
    width: int
    height: int
    runs: tuple[Run, ...]
    shots: tuple[Shot, ...] = ()
    rotation: int = 0
    """Display-matrix degrees (counter-clockwise, as FFmpeg and PyAV's frame.rotation read them)."""

    @property
    def vfr(self) -> bool:
        return len({run.fps for run in self.runs}) > 1

    @property
    def fps(self) -> float | None:
        return None if self.vfr else float(self.runs[0].fps)

    @property
    def time_base(self) -> Fraction:
        return VFR_TIME_BASE if self.vfr else Fraction(1, self.runs[0].fps)

    @property
    def coded_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    def schedule(self) -> list[tuple[int, int]]:
        """(pts, duration) of every frame in time_base units; exact, so the truth can be too."""
        frames: list[tuple[int, int]] = []
        pts = 0
        for run in self.runs:
            step = 1 / (self.time_base * run.fps)
            count = _exact(run.duration_s) * run.fps
            if step.denominator != 1 or count.denominator != 1:
                raise ValueError(f"{self.name}: a run of {run.duration_s} s at {run.fps} fps is not whole "
                                 f"frames of whole ticks of {self.time_base}")
            for _ in range(int(count)):
                frames.append((pts, int(step)))
                pts += int(step)
        return frames

    @property
    def duration_s(self) -> float:
        pts, duration = self.schedule()[-1]
        return float((pts + duration) * self.time_base)


def _exact(seconds: float) -> Fraction:
    """The decimal a plan was written with (2.8 means 14/5), not the nearest binary float."""
    return Fraction(repr(seconds))


def _shot(photo: str, start: float, end: float, x: tuple[float, float], y: tuple[float, float],
          h: tuple[float, float]) -> Shot:
    """A shot written as (from, to) pairs per coordinate, which reads better in the plan tables."""
    return Shot(photo, start, end, (x[0], y[0]), (x[1], y[1]), h[0], h[1])


def _test_plans() -> tuple[VideoPlan, ...]:
    w, h = 640, 360
    return (
        VideoPlan("meeting_h264.mp4", "h264", w, h, (Run(6.0, 30),), (
            _shot("obama", 0.5, 3.5, (0.16, 0.33), (0.5, 0.48), (0.5, 0.66)),
            _shot("biden", 2.0, 5.5, (0.8, 0.76), (0.52, 0.5), (0.6, 0.6)),
        )),
        VideoPlan("interview_hevc.mp4", "hevc", w, h, (Run(5.0, 30),), (
            _shot("obama3", 1.0, 4.0, (0.45, 0.55), (0.5, 0.5), (0.7, 0.75)),
        )),
        VideoPlan("vfr_h264.mp4", "h264", w, h, (Run(1.2, 30), Run(1.3, 10), Run(1.5, 24)), (
            _shot("astronaut", 1.0, 3.0, (0.6, 0.4), (0.5, 0.5), (0.65, 0.65)),
        )),
        VideoPlan("rotated_phone.mp4", "h264", w, h, (Run(3.0, 30),), (
            _shot("biden", 0.0, 2.5, (0.4, 0.6), (0.5, 0.5), (0.7, 0.7)),
        ), rotation=-90),
        VideoPlan("group_t1.mp4", "h264", w, h, (Run(4.0, 30),), (
            _shot("t1", 0.0, 4.0, (0.45, 0.55), (0.5, 0.46), (0.66, 0.66)),
        )),
        VideoPlan("empty_scene.mp4", "h264", w, h, (Run(3.0, 30),)),
    )


def _demo_plans() -> tuple[VideoPlan, ...]:
    w, h = 1280, 720
    return (
        VideoPlan("press_briefing_h264.mp4", "h264", w, h, (Run(16.0, 25),), (
            _shot("obama", 1.0, 6.0, (0.2, 0.3), (0.5, 0.48), (0.55, 0.62)),
            _shot("biden", 4.0, 11.0, (0.78, 0.72), (0.5, 0.52), (0.6, 0.6)),
            _shot("obama", 12.0, 15.0, (0.5, 0.5), (0.5, 0.5), (0.55, 0.75)),
        )),
        VideoPlan("interview_hevc.mp4", "hevc", w, h, (Run(10.0, 25),), (
            _shot("obama3", 1.6, 8.4, (0.4, 0.6), (0.5, 0.5), (0.7, 0.8)),
        )),
        VideoPlan("mission_h264.mp4", "h264", w, h, (Run(10.0, 25),), (
            _shot("astronaut", 1.0, 7.0, (0.3, 0.7), (0.5, 0.5), (0.6, 0.6)),
        )),
        VideoPlan("team_dinner_h264.mp4", "h264", w, h, (Run(10.0, 25),), (
            _shot("t1", 1.0, 9.0, (0.42, 0.58), (0.5, 0.45), (0.6, 0.6)),
        )),
    )


BENCH_SECONDS = 20.0


def _bench_plans() -> tuple[VideoPlan, ...]:
    """1080p30 H.264 and HEVC clips with people coming and going, for the speed benchmarks."""
    w, h, d = 1920, 1080, BENCH_SECONDS
    plans = []
    for codec in ("h264", "hevc"):
        for k, (a, b) in enumerate((("obama", "biden"), ("t1", "astronaut"))):
            plans.append(VideoPlan(f"bench_{codec}_{k}.mp4", codec, w, h, (Run(d, 30),), (
                _shot(a, 1.0, d * 0.6, (0.2, 0.3), (0.5, 0.45), (0.3, 0.4)),
                _shot(b, d * 0.3, d - 1.0, (0.82, 0.76), (0.5, 0.55), (0.25, 0.35)),
            )))
    return tuple(plans)


def plan_archive(preset: Preset) -> tuple[VideoPlan, ...]:
    """The videos of a preset, before anything is rendered."""
    if preset == "test":
        return _test_plans()
    if preset == "demo":
        return _demo_plans()
    if preset == "bench":
        return _bench_plans()
    raise ValueError(f"unknown preset {preset!r}; expected 'test', 'demo' or 'bench'")


def rgb_to_yuv420(rgb: np.ndarray) -> Planes:
    """BT.709 limited-range Y, U, V planes of an even-sized RGB image (chroma is the 2x2 mean)."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    luma = _KR * r + (1.0 - _KR - _KB) * g + _KB * b
    pb = (b - luma) / (2.0 * (1.0 - _KB))
    pr = (r - luma) / (2.0 * (1.0 - _KR))
    h, w = luma.shape
    pb = pb.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    pr = pr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return (_to_u8(16.0 + 219.0 * luma), _to_u8(128.0 + 224.0 * pb), _to_u8(128.0 + 224.0 * pr))


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: tuple[int, int],
                  channels: int) -> np.ndarray:
    """Random values on a coarse grid, bicubic-upsampled: smooth blobs (or streaks, for unequal cells)."""
    h, w = size
    gh, gw = h // cell[0] + 3, w // cell[1] + 3
    grid = rng.integers(0, 256, (gh, gw, channels), dtype=np.uint8)
    image = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    big = np.asarray(image.resize((gw * cell[1], gh * cell[0]), Image.Resampling.BICUBIC))
    return big[cell[0]:cell[0] + h, cell[1]:cell[1] + w].astype(np.float32) / 255.0


class Background:
    """Two textures sliding on different Lissajous paths, so no single motion vector predicts a block.

    The base is large soft colour blobs over a diagonal gradient; the detail layer is horizontal
    luma streaks. Neither has the compact dark-light-dark structure of eyes and mouth.
    """

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.width, self.height = width, height
        self.margin = 2 * (max(width, height) // 16)
        th, tw = height + 2 * self.margin, width + 2 * self.margin
        blobs = _smooth_noise(rng, (th, tw), (max(th // 3, 8), max(tw // 4, 8)), 3)
        ramp = np.linspace(0.0, 1.0, tw, dtype=np.float32)[None, :] * 0.6 + np.linspace(
            0.0, 1.0, th, dtype=np.float32)[:, None] * 0.4
        ends = rng.uniform(0.1, 0.9, (2, 3)).astype(np.float32)
        gradient = ends[0] + (ends[1] - ends[0]) * ramp[..., None]
        rgb = (0.55 * blobs + 0.45 * gradient) * 170.0 + 10.0
        th, tw = th - th % 2, tw - tw % 2
        self.base = rgb_to_yuv420(rgb[:th, :tw].astype(np.uint8))
        streaks = _smooth_noise(rng, (th, tw), (max(height // 60, 3), max(width // 12, 8)), 1)
        self.detail = (streaks * 48.0).astype(np.uint8)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, 4)

    def _offset(self, t: float, period: tuple[float, float], phase: tuple[float, float]) -> tuple[int, int]:
        """Window origin in [0, 2 * margin], even so that it lands on a chroma sample."""
        centre, amp = self.margin // 2, self.margin // 2 - 1
        x = centre + amp * np.sin(2.0 * np.pi * t / period[0] + phase[0])
        y = centre + amp * np.sin(2.0 * np.pi * t / period[1] + phase[1])
        return 2 * round(x), 2 * round(y)

    def planes(self, t: float) -> Planes:
        """Writable Y, U, V planes of the background at t seconds."""
        w, h = self.width, self.height
        bx, by = self._offset(t, (9.0, 7.0), (self.phase[0], self.phase[1]))
        dx, dy = self._offset(t, (5.0, 11.0), (self.phase[2], self.phase[3]))
        y = np.add(self.base[0][by:by + h, bx:bx + w], self.detail[dy:dy + h, dx:dx + w])
        u = self.base[1][by // 2:(by + h) // 2, bx // 2:(bx + w) // 2].copy()
        v = self.base[2][by // 2:(by + h) // 2, bx // 2:(bx + w) // 2].copy()
        return y, u, v


class Composer:
    """Renders the upright frames of one plan: background plus the shots visible at time t."""

    def __init__(self, plan: VideoPlan, photos: Mapping[str, np.ndarray], seed: int):
        self.plan = plan
        self.aspect: dict[str, float] = {}
        self.crops: dict[str, Image.Image] = {}
        for photo in {shot.photo for shot in plan.shots}:
            crop = _crop(photo, photos)
            self.aspect[photo] = crop.width / crop.height
            self.crops[photo] = _shrink(crop, self._tallest(photo))
        rng = np.random.default_rng([seed, zlib.crc32(plan.name.encode())])
        self.background = Background(plan.width, plan.height, rng)
        self.patches: dict[tuple[str, int, int], Planes] = {}

    def _tallest(self, photo: str) -> int:
        heights = [max(s.height_from, s.height_to) for s in self.plan.shots if s.photo == photo]
        return _even(max(heights) * self.plan.height) + 2

    def visible(self, t: Fraction) -> list[Shot]:
        return [shot for shot in self.plan.shots if _shows(shot, t)]

    def rect(self, shot: Shot, t: Fraction) -> Rect:
        """x, y, w, h of the pasted photo: even, so no 4:2:0 chroma sample mixes photo and background."""
        span = _exact(shot.end_s) - _exact(shot.start_s)
        u = float((t - _exact(shot.start_s)) / span) if span else 0.0
        fw, fh = self.plan.width, self.plan.height
        h = _even(fh * (shot.height_from + (shot.height_to - shot.height_from) * u))
        w = _even(h * self.aspect[shot.photo])
        if not (0 < w <= fw and 0 < h <= fh):
            raise ValueError(f"{self.plan.name}: {shot.photo} would be {w}x{h}, not inside {fw}x{fh}")
        cx = shot.centre_from[0] + (shot.centre_to[0] - shot.centre_from[0]) * u
        cy = shot.centre_from[1] + (shot.centre_to[1] - shot.centre_from[1]) * u
        x = min(max(_even(cx * fw - w / 2), 0), fw - w)
        y = min(max(_even(cy * fh - h / 2), 0), fh - h)
        return x, y, w, h

    def patch(self, photo: str, w: int, h: int) -> Planes:
        key = (photo, w, h)
        if key not in self.patches:
            scaled = self.crops[photo].resize((w, h), Image.Resampling.LANCZOS)
            self.patches[key] = rgb_to_yuv420(np.asarray(scaled))
        return self.patches[key]

    def planes(self, t: Fraction) -> Planes:
        """Upright Y, U, V planes at time t; shots showing at once must not cover each other."""
        y, u, v = self.background.planes(float(t))
        rects: list[tuple[str, Rect]] = []
        for shot in self.visible(t):
            rect = self.rect(shot, t)
            for other, placed in rects:
                if _overlap(rect, placed):
                    raise ValueError(f"{self.plan.name}: {shot.photo} covers {other} at {float(t):.3f} s; "
                                     "a hidden face would make the ground truth wrong")
            rects.append((shot.photo, rect))
            x0, y0, w, h = rect
            py, pu, pv = self.patch(shot.photo, w, h)
            y[y0:y0 + h, x0:x0 + w] = py
            u[y0 // 2:(y0 + h) // 2, x0 // 2:(x0 + w) // 2] = pu
            v[y0 // 2:(y0 + h) // 2, x0 // 2:(x0 + w) // 2] = pv
        return y, u, v


def _shows(shot: Shot, t: Fraction) -> bool:
    return _exact(shot.start_s) <= t <= _exact(shot.end_s)


def _even(x: float) -> int:
    return 2 * round(x / 2)


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _shrink(image: Image.Image, height: int) -> Image.Image:
    """Scale down once to the largest size a plan pastes, so each per-frame size is a cheap resize."""
    if image.height <= height:
        return image
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _crop(photo: str, photos: Mapping[str, np.ndarray]) -> Image.Image:
    if photo == QUERY_PHOTO:
        raise ValueError(f"{QUERY_PHOTO} is the query photo and must not appear in the archive")
    if photo not in FRAMINGS:
        raise ValueError(f"no framing for photo {photo!r}; known: {', '.join(FRAMINGS)}")
    if photo not in photos:
        raise KeyError(f"photo {photo!r} was not given (load it with engines.photos.load_photo)")
    rgb = np.asarray(photos[photo])
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"photo {photo!r} must be an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    left, top, right, bottom = FRAMINGS[photo].crop
    h, w = rgb.shape[:2]
    return Image.fromarray(rgb[int(top * h):int(bottom * h), int(left * w):int(right * w)])


def store_planes(planes: Planes, rotation: int) -> np.ndarray:
    """The I420 buffer that is encoded: upright planes turned so that the display matrix turns them back.

    Players rotate the decoded picture counter-clockwise by the display-matrix angle, so the stored
    picture is the upright one rotated clockwise by that angle.
    """
    turns = (rotation // 90) % 4
    y, u, v = (np.rot90(p, k=-turns) for p in planes) if turns else planes
    return np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(-1, y.shape[1])


def _open_stream(container: Any, plan: VideoPlan, preset: Preset) -> Any:
    """An encoder tagged BT.709 limited range (and hvc1, which Apple players require for HEVC in MP4).

    VFR streams get no B-frames: MP4 stores DTS deltas, and with reordering over a rate change the
    stream's length comes out a fraction of a frame off its PTS length.
    """
    speed = _ENCODER_SPEED[preset][plan.codec]
    options = {"preset": speed, "crf": "23" if plan.codec == "h264" else "28"}
    if plan.codec == "hevc":
        options["x265-params"] = "log-level=error"
    if plan.vfr:
        options["bf"] = "0"
    rate = max(run.fps for run in plan.runs)
    stream = container.add_stream(_ENCODERS[plan.codec], rate=rate, options=options)
    stream.width, stream.height = plan.coded_size
    stream.pix_fmt = "yuv420p"
    stream.time_base = plan.time_base
    ctx = stream.codec_context
    ctx.time_base = plan.time_base
    ctx.gop_size = 2 * rate
    ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
    ctx.color_range = _LIMITED_RANGE
    if plan.codec == "hevc":
        ctx.codec_tag = "hvc1"
    if plan.rotation:
        stream.set_display_rotation(plan.rotation)
    return stream


def _encode(plan: VideoPlan, composer: Composer, path: Path, preset: Preset) -> None:
    """Write the frames with their exact PTS and durations (the last frame's duration sets the length)."""
    schedule = plan.schedule()
    durations = dict(schedule)
    width, _ = plan.coded_size
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = _open_stream(container, plan, preset)

        def mux(packets: Sequence[Any]) -> None:
            for packet in packets:
                if packet.pts is not None:
                    packet.duration = durations[packet.pts]
                container.mux(packet)

        for pts, _duration in schedule:
            buffer = store_planes(composer.planes(pts * plan.time_base), plan.rotation)
            frame = av.VideoFrame.from_ndarray(buffer, format="yuv420p")
            if frame.width != width:
                raise ValueError(f"{plan.name}: frame width {frame.width}, expected {width}")
            frame.colorspace = frame.color_primaries = frame.color_trc = _BT709
            frame.color_range = _LIMITED_RANGE
            frame.pts = pts
            frame.time_base = plan.time_base
            mux(stream.encode(frame))
        mux(stream.encode(None))


def ground_truth(plan: VideoPlan) -> tuple[Appearance, ...]:
    """First and last frame PTS of each shot, from the same schedule and visibility test as the frames."""
    times = [pts * plan.time_base for pts, _ in plan.schedule()]
    found = []
    for shot in plan.shots:
        shown = [t for t in times if _shows(shot, t)]
        if not shown:
            raise ValueError(f"{plan.name}: {shot.photo} at {shot.start_s}-{shot.end_s} s is on no frame")
        framing = FRAMINGS[shot.photo]
        found.append(Appearance(framing.person, shot.photo, float(shown[0]), float(shown[-1]), framing.faces))
    return tuple(sorted(found, key=lambda a: (a.start_s, a.person)))


def build_video(plan: VideoPlan, out_dir: Path, photos: Mapping[str, np.ndarray], *, preset: Preset = "test",
                seed: int = 0) -> SampleVideo:
    """Render and encode one plan to out_dir/plan.name, atomically."""
    composer = Composer(plan, photos, seed)
    appearances = ground_truth(plan)
    path = out_dir / plan.name
    tmp = out_dir / f".{plan.name}.{os.getpid()}.tmp"
    try:
        _encode(plan, composer, tmp, preset)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return SampleVideo(name=plan.name, path=path, codec=plan.codec, width=plan.width, height=plan.height,
                       fps=plan.fps, duration_s=plan.duration_s, vfr=plan.vfr, rotation=plan.rotation,
                       appearances=appearances)


def build_sample_archive(out_dir: Path, photos: Mapping[str, np.ndarray], *, preset: Preset = "test",
                         seed: int = 0, processes: int = 1) -> list[SampleVideo]:
    """Build every video of the preset into out_dir (existing files of the same name are replaced).

    The seed picks the backgrounds; who appears where and when is fixed by the preset. With
    processes > 1 the videos are rendered in parallel (the benchmark's long 1080p clips).
    """
    plans = plan_archive(preset)
    for plan in plans:
        for shot in plan.shots:
            _crop(shot.photo, photos)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if processes > 1 and len(plans) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(processes, len(plans))) as pool:
            futures = [pool.submit(build_video, plan, out_dir, dict(photos), preset=preset, seed=seed)
                       for plan in plans]
            return [f.result() for f in futures]
    return [build_video(plan, out_dir, photos, preset=preset, seed=seed) for plan in plans]


def write_truth(videos: list[SampleVideo], path: Path) -> None:
    """JSON ground truth; video paths are relative to the truth file's folder so the archive can move."""
    path = Path(path)
    root = path.parent.absolute()
    entries = []
    for video in videos:
        entry = asdict(video)
        entry["path"] = Path(os.path.relpath(Path(video.path).absolute(), root)).as_posix()
        entries.append(entry)
    document = {"format": TRUTH_FORMAT, "version": TRUTH_VERSION, "videos": entries}
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode())


def read_truth(path: Path) -> list[SampleVideo]:
    path = Path(path)
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{path}: not a {TRUTH_FORMAT} file")
    version = document.get("version")
    if version != TRUTH_VERSION:
        raise ValueError(f"{path}: truth version {version!r}; this code reads {TRUTH_VERSION}")
    videos = []
    for entry in document["videos"]:
        fields = dict(entry)
        fields["path"] = path.parent / fields["path"]
        fields["appearances"] = tuple(Appearance(**a) for a in fields["appearances"])
        videos.append(SampleVideo(**fields))
    return videos


__all__ = [
    "FRAMINGS",
    "QUERY_PHOTO",
    "Appearance",
    "Composer",
    "Run",
    "SampleVideo",
    "Shot",
    "VideoPlan",
    "build_sample_archive",
    "build_video",
    "ground_truth",
    "plan_archive",
    "read_truth",
    "rgb_to_yuv420",
    "store_planes",
    "write_truth",
]
