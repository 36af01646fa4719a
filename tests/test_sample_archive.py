"""The sample archive is what indexer tests are judged against, so its files must say what its truth says.

Every file is decoded with PyAV and compared with the frames the builder meant to write: codec,
displayed size after the display matrix, every frame's PTS, length, and each appearance's first and
last frame (the photo is there, and the frame before or after shows only background).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engines.photos import load_photo
from samples.archive import (
    QUERY_PHOTO,
    Background,
    Composer,
    SampleVideo,
    VideoPlan,
    build_sample_archive,
    ground_truth,
    plan_archive,
    read_truth,
    write_truth,
)

PLANS = {plan.name: plan for plan in plan_archive("test")}
PHOTO_NAMES = sorted({shot.photo for preset in ("test", "demo")
                      for plan in plan_archive(preset) for shot in plan.shots})


@dataclass
class Decoded:
    codec: str
    coded_size: tuple[int, int]
    displayed_size: tuple[int, int]
    rotations: set[float]
    times: list[Fraction]
    stream_duration_s: float
    container_duration_s: float
    average_rate: Fraction | None
    guessed_rate: Fraction | None
    luma: dict[Fraction, np.ndarray] = field(default_factory=dict)
    """Upright Y planes of the frames a test looks at, by PTS."""


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: load_photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> list[SampleVideo]:
    return build_sample_archive(tmp_path_factory.mktemp("archive"), photos, preset="test", seed=7)


@pytest.fixture(scope="module")
def decoded(archive: list[SampleVideo]) -> dict[str, Decoded]:
    return {video.name: decode(video.path, frames_of_interest(PLANS[video.name])) for video in archive}


def frame_times(plan: VideoPlan) -> list[Fraction]:
    return [pts * plan.time_base for pts, _ in plan.schedule()]


def neighbours(plan: VideoPlan, t: float) -> tuple[Fraction | None, Fraction, Fraction | None]:
    times = frame_times(plan)
    i = times.index(Fraction(t).limit_denominator(100_000))
    return (times[i - 1] if i else None), times[i], (times[i + 1] if i + 1 < len(times) else None)


def frames_of_interest(plan: VideoPlan) -> set[Fraction]:
    times = frame_times(plan)
    wanted = {times[0], times[len(times) // 2], times[-1]}
    for appearance in ground_truth(plan):
        for t in (appearance.start_s, appearance.end_s):
            wanted.update(x for x in neighbours(plan, t) if x is not None)
    return wanted


def decode(path: Path, keep: set[Fraction]) -> Decoded:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        assert stream.duration is not None and stream.time_base is not None and container.duration is not None
        out = Decoded(codec=ctx.name, coded_size=(ctx.width, ctx.height), displayed_size=(0, 0),
                      rotations=set(), times=[], stream_duration_s=float(stream.duration * stream.time_base),
                      container_duration_s=container.duration / av.time_base,
                      average_rate=stream.average_rate, guessed_rate=stream.guessed_rate)
        for frame in container.decode(stream):
            assert frame.pts is not None and frame.time_base is not None
            t = frame.pts * frame.time_base
            out.times.append(t)
            out.rotations.add(frame.rotation)
            if not out.displayed_size[0]:
                turned = round(frame.rotation / 90) % 2
                out.displayed_size = (frame.height, frame.width) if turned else (frame.width, frame.height)
            if t in keep:
                out.luma[t] = upright(frame.to_ndarray(format="yuv420p")[:frame.height], frame.rotation)
        return out


def upright(plane: np.ndarray, rotation: float) -> np.ndarray:
    """Players turn the picture counter-clockwise by the display-matrix angle, as np.rot90 does."""
    return np.rot90(plane, k=round(rotation / 90) % 4)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def test_containers_say_what_the_truth_says(archive: list[SampleVideo], decoded: dict[str, Decoded]) -> None:
    assert [v.name for v in archive] == list(PLANS)
    for video in archive:
        got, plan = decoded[video.name], PLANS[video.name]
        assert got.codec == video.codec, video.name
        assert got.displayed_size == (video.width, video.height) == (640, 360), video.name
        assert got.times == frame_times(plan), f"{video.name}: decoded PTS differ from the schedule"
        assert got.stream_duration_s == pytest.approx(video.duration_s, abs=1e-6), video.name
        assert got.container_duration_s == pytest.approx(video.duration_s, abs=1e-3), video.name
        if video.fps is not None:
            assert len(got.times) == round(video.duration_s * video.fps), video.name
            assert got.average_rate == video.fps, video.name
    expected = {"meeting_h264.mp4": 180, "interview_hevc.mp4": 150, "vfr_h264.mp4": 85,
                "rotated_phone.mp4": 90, "group_t1.mp4": 120, "empty_scene.mp4": 90}
    assert {name: len(d.times) for name, d in decoded.items()} == expected


def test_vfr_file_has_true_timestamps_far_from_constant_rate(archive: list[SampleVideo],
                                                             decoded: dict[str, Decoded]) -> None:
    video = next(v for v in archive if v.name == "vfr_h264.mp4")
    got = decoded[video.name]
    assert video.vfr and video.fps is None
    deltas = {b - a for a, b in zip(got.times, got.times[1:], strict=False)}
    assert deltas == {Fraction(1, 30), Fraction(1, 10), Fraction(1, 24)}
    assert got.times[-1] == Fraction(video.duration_s).limit_denominator(1000) - Fraction(1, 24)
    last_index = len(got.times) - 1
    for assumed in (30, got.guessed_rate):
        assert assumed is not None
        assert float(got.times[-1]) - last_index / float(assumed) > 0.5, f"constant {assumed} fps is close"
    (astronaut,) = video.appearances
    assert (astronaut.start_s, astronaut.end_s) == (1.0, 3.0)


def test_rotated_file_is_stored_sideways_and_shown_upright(archive: list[SampleVideo],
                                                           decoded: dict[str, Decoded],
                                                           photos: dict[str, np.ndarray]) -> None:
    video = next(v for v in archive if v.name == "rotated_phone.mp4")
    got = decoded[video.name]
    assert got.coded_size == (360, 640)
    assert got.rotations == {video.rotation} and video.rotation in (90, -90)
    composer = Composer(PLANS[video.name], photos, seed=7)
    for t, luma in got.luma.items():
        wanted = composer.planes(t)[0]
        assert psnr(luma, wanted) > 35.0, f"upright frame at {float(t)} s"
        assert psnr(np.rot90(luma, k=2), wanted) < 25.0


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command is not installed")
def test_ffmpeg_autorotates_the_phone_video_upright(archive: list[SampleVideo],
                                                    photos: dict[str, np.ndarray]) -> None:
    video = next(v for v in archive if v.name == "rotated_phone.mp4")
    command = ["ffmpeg", "-v", "error", "-ss", "1.0", "-i", str(video.path), "-frames:v", "1",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    assert len(raw) == video.width * video.height * 3 // 2
    shown = np.frombuffer(raw, np.uint8)[:video.width * video.height].reshape(video.height, video.width)
    wanted = Composer(PLANS[video.name], photos, seed=7).planes(Fraction(1))[0]
    assert psnr(shown, wanted) > 35.0


def test_every_decoded_frame_checked_matches_the_composition(decoded: dict[str, Decoded],
                                                              photos: dict[str, np.ndarray]) -> None:
    for name, got in decoded.items():
        composer = Composer(PLANS[name], photos, seed=7)
        for t, luma in got.luma.items():
            assert psnr(luma, composer.planes(t)[0]) > 35.0, f"{name} at {float(t)} s"


def test_appearances_start_and_end_on_the_frames_that_show_them(archive: list[SampleVideo],
                                                               decoded: dict[str, Decoded],
                                                               photos: dict[str, np.ndarray]) -> None:
    for video in archive:
        plan, got = PLANS[video.name], decoded[video.name]
        composer = Composer(plan, photos, seed=7)
        shots = {(s.photo, s.start_s): s for s in plan.shots}
        for appearance in video.appearances:
            shot = next(s for (photo, start), s in shots.items()
                        if photo == appearance.photo and abs(start - appearance.start_s) < 0.05)
            before, first, _ = neighbours(plan, appearance.start_s)
            _, last, after = neighbours(plan, appearance.end_s)
            for shown, hidden in ((first, before), (last, after)):
                x, y, w, h = composer.rect(shot, shown)
                region = (slice(y, y + h), slice(x, x + w))
                plain = composer.background.planes(float(shown))[0][region]
                assert psnr(got.luma[shown][region], plain) < 20, f"{video.name}: {appearance} at {shown}"
                if hidden is not None:
                    plain = composer.background.planes(float(hidden))[0][region]
                    assert psnr(got.luma[hidden][region], plain) > 30, f"{video.name}: {appearance}, {hidden}"


def test_truth_json_round_trips_with_relative_paths(archive: list[SampleVideo], tmp_path: Path) -> None:
    truth = archive[0].path.parent / "truth.json"
    write_truth(archive, truth)
    assert read_truth(truth) == archive
    document = json.loads(truth.read_text())
    assert [v["path"] for v in document["videos"]] == [v.name for v in archive]
    moved = tmp_path / "moved"
    shutil.copytree(truth.parent, moved)
    assert [v.path for v in read_truth(moved / "truth.json")] == [moved / v.name for v in archive]
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError):
        read_truth(tmp_path / "bad.json")


def test_test_preset_times() -> None:
    truth = {plan.name: [(a.person, a.photo, a.start_s, a.end_s, a.faces) for a in ground_truth(plan)]
             for plan in plan_archive("test")}
    assert truth == {
        "meeting_h264.mp4": [("obama", "obama", 0.5, 3.5, 1), ("biden", "biden", 2.0, 5.5, 1)],
        "interview_hevc.mp4": [("obama", "obama3", 1.0, 4.0, 1)],
        "vfr_h264.mp4": [("astronaut", "astronaut", 1.0, 3.0, 1)],
        "rotated_phone.mp4": [("biden", "biden", 0.0, 2.5, 1)],
        "group_t1.mp4": [("t1_group", "t1", 0.0, 119 / 30, 6)],
        "empty_scene.mp4": [],
    }


def test_demo_preset_plan() -> None:
    plans = plan_archive("demo")
    assert 3 <= len(plans) <= 4
    assert 40.0 <= sum(p.duration_s for p in plans) <= 60.0
    assert all((p.width, p.height) == (1280, 720) for p in plans)
    assert sum(p.codec == "hevc" for p in plans) == 1
    shown: dict[str, set[tuple[str, str]]] = {}
    for plan in plans:
        for appearance in ground_truth(plan):
            shown.setdefault(appearance.person, set()).add((plan.name, appearance.photo))
    assert {photo for _, photo in shown["obama"]} == {"obama", "obama3"}
    assert len({name for name, _ in shown["obama"]}) == 2
    assert {"biden", "astronaut", "t1_group"} <= shown.keys()


def test_query_photo_is_never_shown() -> None:
    for preset in ("test", "demo"):
        assert all(shot.photo != QUERY_PHOTO for plan in plan_archive(preset) for shot in plan.shots)


def test_missing_photo_fails_before_writing(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    partial = {name: image for name, image in photos.items() if name != "biden"}
    with pytest.raises(KeyError, match="biden"):
        build_sample_archive(tmp_path, partial)
    assert not any(tmp_path.iterdir())


def test_frames_are_seeded(photos: dict[str, np.ndarray]) -> None:
    plan = PLANS["meeting_h264.mp4"]
    t = Fraction(2)
    same = [Composer(plan, photos, seed=3).planes(t) for _ in range(2)]
    other = Composer(plan, photos, seed=4).planes(t)
    assert all(np.array_equal(a, b) for a, b in zip(*same, strict=True))
    assert not np.array_equal(same[0][0], other[0])


def test_background_has_texture_and_moves() -> None:
    background = Background(640, 360, np.random.default_rng(0))
    first, later = background.planes(0.0)[0], background.planes(1.0)[0]
    assert float(first.std()) > 10.0
    assert float(np.abs(first.astype(int) - later).mean()) > 3.0

