"""Real photos of real faces, taken from packages on PyPI, for model checks, tests and the demo.

They are downloaded on first use into the cache (never committed): the test images of
`face_recognition` (Obama three times, Biden), insightface's `t1.jpg` (six people at a table) and
scikit-image's astronaut (Eileen Collins). Real footage too: OpenCV's `vtest.avi` (768x576 surveillance
video, 4-9 pedestrians at a time, 795 frames at 10 fps) from the opencv-python sdist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.images import load_rgb
from engines.sources import Progress, SourceFile, default_cache_dir, fetch_source

_FR = ("face-recognition", "1.3.0")
_INSIGHT = ("insightface", "2.1")
_SKIMAGE = ("scikit-image", "0.26.0")
_OPENCV = ("opencv-python", "4.10.0.84")

PHOTOS: dict[str, SourceFile] = {
    "obama": SourceFile(*_FR, dist="sdist", member="tests/test_images/obama.jpg",
                        sha256="0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6", license="MIT"),
    "obama2": SourceFile(*_FR, dist="sdist", member="tests/test_images/obama2.jpg",
                         sha256="a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6", license="MIT"),
    "obama3": SourceFile(*_FR, dist="sdist", member="tests/test_images/obama3.jpg",
                         sha256="76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3", license="MIT"),
    "biden": SourceFile(*_FR, dist="sdist", member="tests/test_images/biden.jpg",
                        sha256="3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c", license="MIT"),
    "t1": SourceFile(*_INSIGHT, dist="sdist", member="insightface/data/images/t1.jpg",
                     sha256="47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489", license="MIT"),
    "astronaut": SourceFile(*_SKIMAGE, dist="wheel", member="skimage/data/astronaut.png",
                            sha256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
                            license="public domain (NASA)"),
}
PORTRAITS = ("obama", "obama2", "obama3", "biden", "astronaut")
"""Photos with exactly one face; t1 has six."""
IDENTITY = {"obama": "obama", "obama2": "obama", "obama3": "obama", "biden": "biden", "astronaut": "astronaut"}


def photo_path(name: str, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known photos are {', '.join(PHOTOS)}")
    return fetch_source(PHOTOS[name], cache_dir or default_cache_dir(), progress)


def load_photo(name: str, cache_dir: Path | None = None, progress: Progress | None = None) -> np.ndarray:
    return load_rgb(photo_path(name, cache_dir, progress))


VIDEOS: dict[str, SourceFile] = {
    "vtest": SourceFile(*_OPENCV, dist="sdist", member="opencv/samples/data/vtest.avi",
                        sha256="45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
                        license="Apache-2.0 (OpenCV samples)"),
}


def video_path(name: str, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    if name not in VIDEOS:
        raise KeyError(f"unknown video {name!r}; known videos are {', '.join(VIDEOS)}")
    return fetch_source(VIDEOS[name], cache_dir or default_cache_dir(), progress)
