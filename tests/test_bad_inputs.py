"""Bad inputs among good videos: every good video is indexed, every bad one is recorded failed or
skipped with a reason a person understands, a failed video leaves no Parquet part and no track row,
and the job's summary and exit code say what happened. All files are generated at set-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import badfiles  # tests/badfiles.py
import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from catalog.archive import scan_archive
from catalog.db import Catalog, default_db_url
from catalog.outcome import VideoOutcome
from indexer.decode.pyav import PyAVDecoder
from indexer.errors import VideoError
from jobs.runner import JobEvents, JobResult, LocalExecutor, run_job
from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig
from schemas.sql import Track, Video
from schemas.tables import TABLES

AS_ROOT = os.geteuid() == 0
WEIRD_NAME = "name with spaces, 'single' \"double\" quotes, ünïcødé 日本.mp4"
NEWLINE_NAME = "two\nlines.mp4"

# name -> what must happen: ("done", None) | ("failed", words of the reason) | ("skipped", words of the reason)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "good.mp4": ("done", None),
    WEIRD_NAME: ("done", None),
    NEWLINE_NAME: ("done", None),
    "eight_k.mp4": ("done", None),
    "vfr.mp4": ("done", None),
    "rotated_phone.mp4": ("done", None),
    "empty.mp4": ("failed", "the file is empty (0 bytes)"),
    "no_moov.mp4": ("failed", "index (moov box) is missing"),
    "half_mdat.mp4": ("failed", "the file is truncated"),
    "random.mp4": ("failed", "not a video file FFmpeg recognises (random or corrupt data?)"),
    "noise_read_as_lyrics.mp4": ("failed", "binary data that FFmpeg can only guess at as LRC lyrics"),
    "noise_read_as_raw_h263.mp4": ("failed", "its bytes pass only for raw H.263, a bare stream without a container"),
    "bare_h264_stream.mp4": ("done", None),  # a DVR export: raw H.264 under a container's name
    "text.mp4": ("failed", "a text file, not a video"),
    "subtitles.mp4": ("failed", "no video stream (the file has subtitle; FFmpeg reads it as WebVTT"),
    "subtitles_latin1.mp4": ("failed", "no video stream (the file has subtitle; FFmpeg reads it as SubRip"),
    "photo.mp4": ("failed", "a still image (JPEG), not a video"),
    "audio_only.mp4": ("failed", "no video stream (the file has audio; FFmpeg reads it as QuickTime"),
    "no_frames.mkv": ("failed", "the video stream holds no frames"),
    "unknown_codec.mp4": ("failed", "the video codec is not supported"),
    "deleted_during_job.mp4": ("failed", "the file does not exist (deleted or moved?)"),
    "loop_a.mp4": ("skipped", "broken link or loop"),
    "loop_b.mp4": ("skipped", "broken link or loop"),
    "outside.mp4": ("skipped", "symlink points outside the archive"),
    "fifo.mp4": ("skipped", "not a regular file"),
}
if not AS_ROOT:  # root reads any file: the permission case is proven below in a process run as `nobody`
    EXPECTED["locked.mp4"] = ("skipped", "permission denied")


@dataclass
class BadArchive:
    root: Path
    out: Path
    catalog: Catalog
    result: JobResult
    outcomes: dict[str, VideoOutcome]


def build(archive: Path, outside: Path) -> None:
    bf = badfiles
    good = bf.write_video(archive / "good.mp4", seconds=2)
    bf.write_video(archive / WEIRD_NAME, seed=1)
    bf.write_video(archive / NEWLINE_NAME, seed=2)
    bf.write_video(archive / "eight_k.mp4", width=7680, height=4320, seconds=1, fps=1)
    bf.write_video(archive / "vfr.mp4", pts_schedule=[0, 33, 66, 100, 400, 700, 733, 766, 1300, 1900],
                   time_base=Fraction(1, 1000))
    bf.write_video(archive / "rotated_phone.mp4", width=96, height=64, rotation=90, seed=3)
    bf.write_video(archive / "bare_h264_stream.mp4", seconds=2, seed=7, container_format="h264")
    (archive / "empty.mp4").write_bytes(b"")
    bf.truncate_before_moov(bf.write_video(outside / "tail_moov.mp4", faststart=False, seconds=2),
                            archive / "no_moov.mp4")
    bf.truncate_mdat(bf.write_video(outside / "front_moov.mp4", seconds=2), archive / "half_mdat.mp4")
    (archive / "random.mp4").write_bytes(bf.noise(30_000))
    bf.noise_read_as("lrc", archive / "noise_read_as_lyrics.mp4")  # FFmpeg's probes take some noise for a format
    bf.noise_read_as("h263", archive / "noise_read_as_raw_h263.mp4")  # ... that then decodes a frame of noise
    (archive / "text.mp4").write_text("Shopping list: eggs, milk, bread.\nNot a video at all.\n" * 20)
    (archive / "subtitles.mp4").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nsubtitles, no pictures\n")
    (archive / "subtitles_latin1.mp4").write_bytes("1\n00:00:01,000 --> 00:00:02,000\nCafé déjà vu\n".encode("latin-1"))
    (archive / "photo.mp4").write_bytes(bf.jpeg_bytes())
    bf.write_audio_only(archive / "audio_only.mp4")
    bf.write_no_frames(archive / "no_frames.mkv")
    bf.unknown_codec(good, archive / "unknown_codec.mp4")
    bf.write_video(archive / "deleted_during_job.mp4", seed=4)
    (archive / "alias.mp4").symlink_to("good.mp4")  # inside the archive: the same video, counted once
    (archive / "loop_a.mp4").symlink_to("loop_b.mp4")
    (archive / "loop_b.mp4").symlink_to("loop_a.mp4")
    (archive / "outside.mp4").symlink_to(bf.write_video(outside / "secret.mp4", seed=5))
    os.mkfifo(archive / "fifo.mp4")
    if not AS_ROOT:
        bf.write_video(archive / "locked.mp4", seed=6).chmod(0)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> BadArchive:
    root = tmp_path_factory.mktemp("bad_inputs")
    archive, outside, out = root / "archive", root / "outside", root / "out"
    archive.mkdir()
    outside.mkdir()
    build(archive, outside)
    catalog = Catalog(default_db_url(out))
    outcomes: dict[str, VideoOutcome] = {}

    def on_video(path: str, outcome: VideoOutcome) -> None:
        if not outcomes:  # the job is under way: a file it has not reached yet disappears
            (archive / "deleted_during_job.mp4").unlink()
        outcomes[Path(path).name] = outcome

    result = run_job(archive, catalog=catalog, out_uri=str(out), settings=IndexSettings(runtime=RuntimeConfig(
        device="cpu")), executor=LocalExecutor(), cache_dir=cache_dir, events=JobEvents(on_video=on_video))
    return BadArchive(root, out, catalog, result, outcomes)


def test_every_good_video_is_indexed_and_every_bad_one_says_why(bad: BadArchive) -> None:
    summary = bad.result.summary
    failures = {Path(f["path"]).name: f["error"] for f in summary.failures}
    skipped = {Path(u["path"]).name: u["error"] for u in summary.unreadable}
    seen = set(bad.outcomes) | set(skipped)
    assert seen == set(EXPECTED), f"unexpected: {seen ^ set(EXPECTED)}"
    for name, (status, words) in EXPECTED.items():
        if status == "done":
            assert bad.outcomes[name].status == "done", (name, bad.outcomes[name].error)
        elif status == "failed":
            assert name in failures and words in failures[name], (name, failures.get(name))
        else:
            assert name in skipped and words in skipped[name], (name, skipped.get(name))
    n_done = sum(s == "done" for s, _ in EXPECTED.values())
    assert summary.done == n_done
    assert summary.failed == sum(s == "failed" for s, _ in EXPECTED.values())
    assert summary.status == "done"  # bad videos never fail the job itself


def test_failed_videos_leave_no_parquet_part_and_no_track_row(bad: BadArchive) -> None:
    with bad.catalog.session() as s:
        videos = {Path(v.path).name: v for v in s.scalars(select(Video))}
        tracks_by_video = dict(s.execute(select(Track.video_id, func.count()).group_by(Track.video_id)).all())
    for name, (status, words) in EXPECTED.items():
        if status == "skipped":
            assert name not in videos
            continue
        video = videos[name]
        parts = sorted(p.name for p in bad.out.glob(f"*/video-{video.id:08d}.*"))
        if status == "done":
            assert video.status == "indexed" and len(parts) == len(TABLES), (name, parts)  # one part per table
        else:
            assert video.status == "failed" and words is not None and words in (video.error or "")
            assert parts == [] and tracks_by_video.get(video.id, 0) == 0, (name, parts)
    leftovers = [p for p in bad.out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_odd_but_valid_videos_are_read_right(bad: BadArchive) -> None:
    with bad.catalog.session() as s:
        videos = {Path(v.path).name: v for v in s.scalars(select(Video))}
    eight_k, rotated, vfr = videos["eight_k.mp4"], videos["rotated_phone.mp4"], videos["vfr.mp4"]
    assert (eight_k.width, eight_k.height) == (7680, 4320)
    assert (rotated.width, rotated.height) == (64, 96)  # displayed size: stored 96x64, turned 90 degrees
    assert vfr.frames_decoded == 10 and vfr.duration_s is not None and 1.9 <= vfr.duration_s <= 2.6
    assert videos[NEWLINE_NAME].path.endswith("two\nlines.mp4")
    assert videos[WEIRD_NAME].path.endswith(WEIRD_NAME)
    assert "alias.mp4" not in videos  # a link inside the archive is the file it points to
    assert videos["bare_h264_stream.mp4"].frames_decoded == 20


def test_a_bare_stream_is_timed_by_counting_its_frames(tmp_path: Path) -> None:
    """Raw H.264 has no timestamps: frame n is at n / the stream's frame rate, across batches (they restarted at
    0 in each batch), and key frames only still counts every frame."""
    path = badfiles.write_video(tmp_path / "dvr.mp4", seconds=2, fps=10, container_format="h264")
    decoder = PyAVDecoder()
    fps = decoder.probe(path).fps
    assert fps  # FFmpeg's guess: the stream says nothing of its rate
    every = [t for b in decoder.batches(path, SamplingConfig(mode="every-frame"), batch_size=8) for t in b.pts_s]
    assert np.allclose(every, np.arange(20) / fps), every
    sampled = [t for b in decoder.batches(path, SamplingConfig(fps=2.0), batch_size=8) for t in b.pts_s]
    assert len(sampled) >= 2 and set(sampled) <= set(every) and sampled == sorted(sampled)
    keys = [t for b in decoder.batches(path, SamplingConfig(mode="keyframes"), batch_size=8) for t in b.pts_s]
    assert keys[0] == 0.0 and set(keys) <= set(every)


def test_the_command_exit_code_and_json_summary_report_failures(tmp_path: Path, cache_dir: Path) -> None:
    from vidx.cli import cli

    archive = tmp_path / "archive"
    archive.mkdir()
    badfiles.write_video(archive / "good.mp4")
    (archive / "broken.mp4").write_bytes(badfiles.noise(5000))
    (archive / "loop.mp4").symlink_to("loop.mp4")
    result = CliRunner().invoke(cli, ["index", str(archive), "--out", str(tmp_path / "out"), "--device", "cpu",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # 3: the job ran, some videos failed
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"]) == (1, 1)
    assert summary["failures"][0]["path"].endswith("broken.mp4")
    assert "not a readable video" in summary["failures"][0]["error"]
    assert [Path(u["path"]).name for u in summary["unreadable"]] == ["loop.mp4"]
    assert "loop" in summary["unreadable"][0]["error"]


def test_a_file_rewritten_while_it_is_decoded_fails_cleanly(tmp_path: Path) -> None:
    path = badfiles.write_video(tmp_path / "v.mp4", seconds=3, fps=10)
    batches = PyAVDecoder().batches(path, SamplingConfig(mode="every-frame"), batch_size=4)
    next(batches)
    replacement = badfiles.write_video(tmp_path / "new.mp4", seconds=1, seed=9)
    os.replace(replacement, path)  # an editor's save or a sync tool: a new file under the same name
    with pytest.raises(VideoError, match="changed while it was being read"):
        for _ in batches:
            pass


def test_a_file_deleted_while_it_is_decoded_fails_cleanly(tmp_path: Path) -> None:
    path = badfiles.write_video(tmp_path / "v.mp4", seconds=3, fps=10)
    batches = PyAVDecoder().batches(path, SamplingConfig(mode="every-frame"), batch_size=4)
    next(batches)
    path.unlink()
    with pytest.raises(VideoError, match="deleted while it was being read"):
        for _ in batches:
            pass


@pytest.mark.skipif(not AS_ROOT, reason="covered by the job test above when not root")
def test_an_unreadable_file_is_skipped_with_the_reason_as_an_ordinary_user(tmp_path_factory: Any) -> None:
    """Root reads everything, so the scan runs in a child process that drops to `nobody` first."""
    import tempfile

    archive = Path(tempfile.mkdtemp(prefix="vidx-perm-"))
    try:
        archive.chmod(0o755)
        badfiles.write_video(archive / "ok.mp4").chmod(0o644)
        badfiles.write_video(archive / "locked.mp4", seed=1).chmod(0)
        code = textwrap.dedent(f"""
            import json, os, sys
            sys.path[:0] = {[str(Path(__file__).resolve().parents[1])]!r}
            from pathlib import Path
            from catalog.archive import scan_archive
            os.setgroups([]); os.setgid(65534); os.setuid(65534)  # imports done as root, the scan as nobody
            found, skipped = scan_archive(Path({str(archive)!r}))
            print(json.dumps({{"found": [p.path.name for p in found],
                              "skipped": [[p.name, why] for p, why in skipped]}}))
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["found"] == ["ok.mp4"]
        assert got["skipped"] == [["locked.mp4", "cannot read the file: permission denied"]]
        # as root the same scan finds both: the check is the real permission, not a name rule
        assert sorted(v.path.name for v in scan_archive(archive)[0]) == ["locked.mp4", "ok.mp4"]
    finally:
        for p in archive.iterdir():
            p.unlink()
        archive.rmdir()


def test_a_video_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    """The limit (8192x8192 by default) keeps a forged or absurd frame size from allocating gigabytes."""
    path = badfiles.write_video(tmp_path / "big.mp4", width=640, height=480, seconds=1, fps=2)
    decoder = PyAVDecoder(max_pixels=640 * 480 - 1)
    with pytest.raises(VideoError, match="640x480 pixels, over the limit of 307,199"):
        next(decoder.batches(path, SamplingConfig(), 4))
    assert decoder.stats.frames_decoded == 0
    with pytest.raises(VideoError, match="over the limit"):  # probe (which the NVDEC path uses too) checks first
        decoder.probe(path)
    assert sum(len(b) for b in PyAVDecoder().batches(path, SamplingConfig(), 4)) == 2


def test_a_benchmark_row_with_a_video_that_failed_stops_the_benchmark_naming_it(
        tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """A rate over the videos that worked would be compared with rates over all of them: `vidx bench` stops
    with the file and the reason instead (real PyAV decoding of a real clip and of its first 2 kB)."""
    from bench.jobs import make_clip
    from bench.video import decode_only, every_video_done
    from indexer.decode.pyav import open_container
    from schemas.errors import VidxError

    good, broken = tmp_path / "good.mp4", tmp_path / "broken.mp4"
    make_clip(good, photos["obama"], seconds=1.0)
    broken.write_bytes(good.read_bytes()[:2000])

    def decode(path: Path) -> int:
        with open_container(path) as container:
            return sum(1 for _ in container.decode(video=0))

    row = decode_only([good, good], 2, decode)
    assert every_video_done(row, "decode only") is row and row["frames"] == 24
    with pytest.raises(VidxError, match=r"^decode only: 1 of 2 videos failed, the first: broken\.mp4: .*broken\.mp4"):
        every_video_done(decode_only([good, broken], 2, decode), "decode only")
