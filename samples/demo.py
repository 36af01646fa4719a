"""The archive `vidx demo` indexes and searches: the `demo` preset built from real photos, its truth beside it.

The query photo (obama2.jpg from face_recognition's test images) appears in none of the videos; two other
photos of the same man do, in two videos, at known times.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engines.photos import load_photo
from samples.archive import Appearance, SampleVideo, build_sample_archive, write_truth

PHOTOS = ("obama", "obama3", "biden", "astronaut", "t1")
"""The photos the demo videos are made of."""
QUERY_PHOTO = "obama2"
QUERY_PERSON = "obama"


def build_demo_archive(archive: Path, truth: Path, cache_dir: Path | None,
                       say: Callable[[str], None]) -> list[SampleVideo]:
    """Build the demo videos in `archive` and write where each person appears to `truth`."""
    photos = {n: load_photo(n, cache_dir, progress=say) for n in PHOTOS}
    say(f"building the sample archive in {archive}")
    videos = build_sample_archive(archive, photos, preset="demo")
    write_truth(videos, truth)
    return videos


def expected_appearances(videos: list[SampleVideo]) -> list[tuple[str, Appearance]]:
    """Where the query's person appears: (video name, appearance), in archive order."""
    return [(v.name, a) for v in videos for a in v.appearances if a.person == QUERY_PERSON]
