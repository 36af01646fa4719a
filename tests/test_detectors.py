"""Face and person detection on real photos, against the reference numbers of the converted models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engines.detectors import FaceDetector, nms, plan_tiles
from engines.loader import Engines

PORTRAITS = ["obama", "obama2", "obama3", "biden", "astronaut"]


def test_all_six_faces_in_t1(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    dets = engines.faces.detect([photos["t1"]])[0]
    assert len(dets) == 6
    widths = dets.boxes[:, 2] - dets.boxes[:, 0]
    assert widths.min() > 80  # the six faces are 100-130 px wide; nothing tiny slipped in
    centres_x = np.sort((dets.boxes[:, 0] + dets.boxes[:, 2]) / 2)
    assert np.all(np.diff(centres_x) > 50)  # six distinct people, not duplicates of one


@pytest.mark.parametrize("name", PORTRAITS)
def test_one_face_in_each_portrait(engines: Engines, photos: dict[str, np.ndarray], name: str) -> None:
    dets = engines.faces.detect([photos[name]])[0]
    assert len(dets) == 1
    x0, y0, x1, y1 = dets.boxes[0]
    kp = dets.keypoints[0]
    # keypoints of a real face: both eyes above the nose, the nose above the mouth, all inside the box
    assert kp[0, 1] < kp[2, 1] < kp[3, 1] and kp[1, 1] < kp[2, 1]
    assert np.all((kp[:4, 0] > x0) & (kp[:4, 0] < x1) & (kp[:4, 1] > y0) & (kp[:4, 1] < y1))


def test_small_faces_in_a_1080p_frame(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """Faces about 24-40 px wide in a 1920x1080 frame are found thanks to the tile pyramid."""
    rng = np.random.default_rng(1)
    frame = (rng.normal(110, 25, (1080, 1920, 3))).clip(0, 255).astype(np.uint8)
    face = Image.fromarray(photos["obama"]).crop((300, 60, 700, 480))  # face + margin, face ~280 px wide
    placed = []
    for i, width in enumerate([34, 40, 48, 60, 34, 40]):
        scale = width / 280
        patch = np.asarray(face.resize((round(400 * scale), round(420 * scale)), Image.Resampling.LANCZOS))
        x, y = 150 + i * 290, 200 + (i % 2) * 500
        frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        placed.append((x + patch.shape[1] / 2, y + patch.shape[0] / 2))
    dets = engines.faces.detect([frame])[0]
    centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
    for cx, cy in placed:
        assert np.min(np.hypot(centres[:, 0] - cx, centres[:, 1] - cy)) < 15, f"face at {cx:.0f},{cy:.0f} missed"
    assert len(dets) == len(placed)


def test_batch_equals_single_runs(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """The ONNX graphs have a dynamic batch: batch N gives what N single runs give."""
    rng = np.random.default_rng(0)
    for session, size, name in [(engines.faces.session, 192, "image"), (engines.persons.session, 224, "image"),  # type: ignore[union-attr]
                                (engines.embedder.session, 150, "chips")]:
        batch = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
        batch[0] = np.asarray(Image.fromarray(photos["t1"]).resize((size, size)))
        together = session.run({name: batch})
        for i in range(5):
            alone = session.run({name: batch[i:i + 1]})
            for key in together:
                np.testing.assert_allclose(together[key][i:i + 1], alone[key], atol=1e-4, rtol=1e-4)


def test_people_in_t1(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """The BlazePose detector finds most of the six people at the table (reference: 4 of 6)."""
    people = engines.persons.detect([photos["t1"]])[0]  # type: ignore[union-attr]
    assert 3 <= len(people) <= 6
    faces = engines.faces.detect([photos["t1"]])[0]
    face_centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    for box in people.boxes:  # every person box holds a face
        inside = ((face_centres[:, 0] > box[0]) & (face_centres[:, 0] < box[2])
                  & (face_centres[:, 1] > box[1]) & (face_centres[:, 1] < box[3]))
        assert inside.any()


def test_no_faces_in_noise(engines: Engines) -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert len(engines.faces.detect([frame])[0]) == 0


def test_tile_plan_covers_the_frame() -> None:
    tiles = plan_tiles(1080, 1920, 192, finest_scale=14 / 24, overlap=48)
    scales = sorted({t.scale for t in tiles})
    assert scales[0] == pytest.approx(0.1) and scales[-1] == pytest.approx(14 / 24)
    for s in scales:
        level = [t for t in tiles if t.scale == s]
        w, h = round(1920 * s), round(1080 * s)
        assert min(t.x0 for t in level) <= 0 and max(t.x0 for t in level) + 192 >= w
        assert min(t.y0 for t in level) <= 0 and max(t.y0 for t in level) + 192 >= h


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]


def test_detector_plans_are_cached(engines: Engines) -> None:
    det: FaceDetector = engines.faces
    assert det.plan(720, 1280) is det.plan(720, 1280)
