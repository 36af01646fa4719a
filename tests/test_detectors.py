"""Face and person detection on real photos, against the reference numbers of the converted models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engines.detectors import (
    FACE_ANCHORS,
    FINE_CANVAS_BATCH,
    FINE_TILE,
    TILE_PICTURE,
    Detections,
    FaceDetector,
    _inside_tile,
    cut_tiles,
    kernel_rows_as_candidates,
    nms_clusters,
    tile_plan,
)
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


def small_faces_frame(photos: dict[str, np.ndarray], widths: list[int]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A 1920x1080 noise frame with obama's face pasted at the given face widths; the centre of each."""
    rng = np.random.default_rng(1)
    frame = (rng.normal(110, 25, (1080, 1920, 3))).clip(0, 255).astype(np.uint8)
    face = Image.fromarray(photos["obama"]).crop((300, 60, 700, 480))  # face + margin, face ~280 px wide
    placed = []
    for i, width in enumerate(widths):
        scale = width / 280
        patch = np.asarray(face.resize((round(400 * scale), round(420 * scale)), Image.Resampling.LANCZOS))
        x, y = 150 + i * 290, 200 + (i % 2) * 500
        frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        placed.append((x + patch.shape[1] / 2, y + patch.shape[0] / 2))
    return frame, placed


def found_at(dets: Detections, placed: list[tuple[float, float]]) -> list[bool]:
    centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
    return [bool(len(dets)) and float(np.min(np.hypot(centres[:, 0] - cx, centres[:, 1] - cy))) < 15
            for cx, cy in placed]


def test_small_faces_in_a_1080p_frame(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """Faces about 34-60 px wide in a 1920x1080 frame are found thanks to the pyramid's finest level, whether
    that level covers the frame as a whole or in tiles, at the same places."""
    frame, placed = small_faces_frame(photos, [34, 40, 48, 60, 34, 40])
    tiled = engines.faces.detect([frame])[0]
    assert engines.faces.fine_tiles
    whole = FaceDetector(engines.faces.session, batch_size=engines.faces.batch_size).detect([frame])[0]
    for dets in (tiled, whole):
        assert found_at(dets, placed) == [True] * len(placed)
        assert len(dets) == len(placed)
    order = np.argsort(tiled.boxes[:, 0]), np.argsort(whole.boxes[:, 0])
    np.testing.assert_allclose(tiled.boxes[order[0]], whole.boxes[order[1]], atol=2.0)


def test_guided_search_finds_the_smallest_faces_only_where_asked(engines: Engines,
                                                                 photos: dict[str, np.ndarray]) -> None:
    """Faces of 28-32 px are below what the coarser levels find: with the finest level on regions, they are
    found inside the regions and only there; 60 px faces are found by the coarser levels anywhere."""
    frame, placed = small_faces_frame(photos, [28, 32, 60, 28, 32, 60])
    around = np.array([[cx - 40, cy - 40, cx + 40, cy + 40] for cx, cy in placed[:2]], np.float32)
    assert found_at(engines.faces.detect([frame], [np.zeros((0, 4), np.float32)])[0], placed) == [
        False, False, True, False, False, True]
    assert found_at(engines.faces.detect([frame], [around])[0], placed) == [True, True, True, False, False, True]
    assert found_at(engines.faces.detect([frame], [None])[0], placed) == [True] * 6


def test_tiles_cover_every_point_of_their_regions() -> None:
    """Every point of a region is counted by some tile: on a tile's picture and TILE_EDGE or more from each of
    its edges inside the level image."""
    rng = np.random.default_rng(0)
    width, height = 1344, 756
    for _ in range(200):
        x0, y0 = rng.uniform(-50, width - 1), rng.uniform(-50, height - 1)
        rect = np.array([[x0, y0, x0 + rng.uniform(1, 700), y0 + rng.uniform(1, 500)]], np.float32)
        tiles = tile_plan(rect, np.zeros(1), width, height)[:, 1:].astype(np.float32)
        if rect[0, 2] <= 0 or rect[0, 3] <= 0:  # reaches into the image by no more than TILE_REACH
            continue
        xs = rng.uniform(max(rect[0, 0], 0), min(rect[0, 2], width - 1), 50)
        ys = rng.uniform(max(rect[0, 1], 0), min(rect[0, 3], height - 1), 50)
        for x, y in zip(xs, ys, strict=True):
            inside = (_inside_tile(np.full(len(tiles), x - tiles[:, 0]), tiles[:, 0], width)
                      & _inside_tile(np.full(len(tiles), y - tiles[:, 1]), tiles[:, 1], height)
                      & (x >= tiles[:, 0]) & (y >= tiles[:, 1]))
            assert inside.any(), (rect, x, y, tiles)


def test_tile_plan_lists_each_frames_tiles_once_in_the_order_its_rectangles_reach_them() -> None:
    """The tiles of many frames' rectangles, planned at once: for each frame, every tile of the level's grid
    (TILE_STRIDE apart, the last flush with the end) whose picture reaches into one of its rectangles grown
    by TILE_REACH, each once, in the order the rectangles first reach them (a rectangle's tiles row by row)."""
    from engines.detectors import TILE_REACH, TILE_STRIDE

    rng = np.random.default_rng(1)
    width, height = 1344, 756
    grid_x = [*range(0, width - TILE_PICTURE, TILE_STRIDE), width - TILE_PICTURE]
    grid_y = [*range(0, height - TILE_PICTURE, TILE_STRIDE), height - TILE_PICTURE]
    corners = rng.uniform([-300, -300], [width + 100, height + 100], (40, 2))
    rects = np.concatenate([corners, corners + rng.uniform(1, 400, (40, 2))], 1).astype(np.float32)
    owner = np.sort(rng.integers(0, 5, 40))
    want = []
    for k in range(5):
        seen: list[tuple[int, int]] = []
        for x0, y0, x1, y1 in rects[owner == k].astype(np.float64):
            x0, y0, x1, y1 = x0 - TILE_REACH, y0 - TILE_REACH, x1 + TILE_REACH, y1 + TILE_REACH
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                continue
            seen += [(x, y) for y in grid_y if y < y1 and y + TILE_PICTURE > y0
                     for x in grid_x if x < x1 and x + TILE_PICTURE > x0 and (x, y) not in seen]
        want += [(k, x, y) for x, y in seen]
    got = tile_plan(rects, owner, width, height)
    assert len(want) > 40 and [tuple(row) for row in got.tolist()] == want
    assert tile_plan(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), width, height).shape == (0, 3)
    # a level no wider than a tile's picture has one column of tiles, at 0
    assert set(tile_plan(rects, owner, 200, height)[:, 1].tolist()) == {0}


def test_tiles_cut_in_one_gather_are_the_tiles_cut_one_by_one(photos: dict[str, np.ndarray]) -> None:
    """The GPU cuts a chunk's tiles in one gather (cut_tiles); on numpy it gives, tile for tile, the slices the
    CPU path copies: the picture at the top left, black beyond it, beyond the level image, and past the
    chunk's tiles."""
    levels = np.stack([np.asarray(Image.fromarray(photos[name]).resize((1344, 756))) for name in ("t1", "obama")])
    height, width = levels.shape[1:3]
    chunk = [(0, 0, 0), (1, 192, 384), (0, width - TILE_PICTURE, height - TILE_PICTURE), (1, width - 100, 500),
             (0, 1200, height - 30), (1, 0, 0)]
    size = 8
    got = cut_tiles(np, levels, chunk, size)
    assert got.shape == (size, FINE_TILE, FINE_TILE, 3) and got.dtype == np.uint8
    for i, (k, x, y) in enumerate(chunk):
        want = np.zeros((FINE_TILE, FINE_TILE, 3), np.uint8)
        picture = levels[k][y:y + TILE_PICTURE, x:x + TILE_PICTURE]
        want[:picture.shape[0], :picture.shape[1]] = picture
        np.testing.assert_array_equal(got[i], want, err_msg=str(chunk[i]))
    assert got[3, :, 100:].max() == 0 and got[3, :240, :100].max() > 0  # the image ends 100 px into this tile
    assert not got[len(chunk):].any()


@pytest.mark.parametrize("n_keypoints", [6, 0])
def test_decoding_kernel_rows_become_candidates(n_keypoints: int) -> None:
    """The GPU's decoding kernel packs each candidate as [box, score, keypoints, flat index]; unpacked, rows give
    the boxes, scores, keypoints (none for people: N x 0 x 2) and batch image, empty runs included."""
    n_anchors, flat = 896, np.array([3, 900, 2 * 896 + 5], np.float32)
    rows = np.zeros((3, 6 + 2 * n_keypoints), np.float32)
    rows[:, :4] = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    rows[:, 4] = [0.9, 0.8, 0.7]
    rows[:, 5:5 + 2 * n_keypoints] = np.arange(3 * 2 * n_keypoints).reshape(3, -1)
    rows[:, -1] = flat
    boxes, scores, kps, image = kernel_rows_as_candidates(rows, n_keypoints, n_anchors)
    np.testing.assert_array_equal(boxes, rows[:, :4])
    np.testing.assert_array_equal(scores, np.float32([0.9, 0.8, 0.7]))
    assert kps.shape == (3, n_keypoints, 2) and kps.dtype == np.float32
    np.testing.assert_array_equal(kps.reshape(3, -1), rows[:, 5:5 + 2 * n_keypoints])
    np.testing.assert_array_equal(image, [0, 1, 2])
    empty = kernel_rows_as_candidates(rows[:0], n_keypoints, n_anchors)
    assert [len(a) for a in empty] == [0, 0, 0, 0] and empty[2].shape == (0, n_keypoints, 2)


def test_head_regions_cover_small_people_only(engines: Engines) -> None:
    """A small standing person gets a region over their head; a person tall enough that their face is for the
    coarser levels gets none."""
    boxes = np.array([[100, 200, 180, 440], [900, 50, 1300, 1050]], np.float32)  # 80x240 and 400x1000 px
    regions = engines.faces.head_regions(boxes, 1080, 1920)
    assert len(regions) == 1
    x0, y0, x1, y1 = regions[0]
    assert x0 < 100 and x1 > 180 and y0 < 200 and 200 + 240 * 0.2 < y1 < 200 + 240 * 0.5


def test_batch_equals_single_runs(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """The ONNX graphs have a dynamic batch: batch N gives what N single runs give."""
    rng = np.random.default_rng(0)
    for session, size, name in [(engines.faces.session, 192, "image"), (engines.persons.session, 416, "image"),  # type: ignore[union-attr]
                                (engines.embedder.session, 150, "chips")]:
        batch = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
        batch[0] = np.asarray(Image.fromarray(photos["t1"]).resize((size, size)))
        together = session.run({name: batch})
        for i in range(5):
            alone = session.run({name: batch[i:i + 1]})
            for key in together:
                np.testing.assert_allclose(together[key][i:i + 1], alone[key], atol=1e-4, rtol=1e-4)


def test_people_in_t1(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """YOLOv3-tiny finds the six people at the table, one box each, each holding one of the six faces."""
    people = engines.persons.detect([photos["t1"]])[0]  # type: ignore[union-attr]
    assert len(people) == 6 and people.keypoints.shape == (6, 0, 2)
    faces = engines.faces.detect([photos["t1"]])[0]
    face_centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    held = set()
    for box in people.boxes:
        inside = np.flatnonzero((face_centres[:, 0] > box[0]) & (face_centres[:, 0] < box[2])
                                & (face_centres[:, 1] > box[1]) & (face_centres[:, 1] < box[3]))
        assert len(inside)
        held.update(inside.tolist())
    assert len(held) == 6


def test_no_faces_in_noise(engines: Engines) -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert len(engines.faces.detect([frame])[0]) == 0


def test_pyramid_levels_cover_every_face_size(engines: Engines) -> None:
    """The finest level shows a --min-face face at >= 16.8 model px, the coarsest shows a face as large as
    the frame's short side within the model's reliable 96 px, and canvases are whole model strides with a
    black margin right and below."""
    det: FaceDetector = engines.faces
    levels = det.plan(1080, 1920)
    assert [round(lv.scale, 4) for lv in levels] == [0.7, 0.35, 0.175, 0.0875]
    assert det.min_face_px * levels[0].scale >= 16.8 - 1e-6
    assert 1080 * levels[-1].scale <= 96
    for level in levels:
        assert level.canvas_h % 32 == 0 and level.canvas_w % 32 == 0
        assert level.canvas_h - level.height >= 16 and level.canvas_w - level.width >= 16
        assert level.width == round(1920 * level.scale) and level.height == round(1080 * level.scale)
    assert levels[-1].max_box == np.inf and levels[0].max_box < np.inf
    assert len(det.plan(360, 640)) == 3  # a small frame needs fewer levels


def test_detector_graph_is_dynamic_in_image_size(engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """A face pasted into a larger input is found at the same place, with its anchors in the same
    row-major order that AnchorSpec.centres gives for that size."""
    face = np.asarray(Image.fromarray(photos["obama"]).resize((192, 192)))
    native = engines.faces.session.run({"image": face[None]})
    best = int(np.argmax(native["scores"][0]))
    centre = FACE_ANCHORS.centres(192, 192)[best] + native["boxes"][0, best, :2]
    canvas = np.zeros((1, 320, 576, 3), np.uint8)
    canvas[0, 96:288, 224:416] = face
    big = engines.faces.session.run({"image": canvas})
    assert big["scores"].shape == (1, (320 // 4) * (576 // 4))
    k = int(np.argmax(big["scores"][0]))
    assert big["scores"][0, k] > 0.8
    found = FACE_ANCHORS.centres(320, 576)[k] + big["boxes"][0, k, :2]
    np.testing.assert_allclose(found, centre + np.array([224.0, 96.0]), atol=4.0)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert [int(c[0]) for c in nms_clusters(boxes, scores, 0.3)] == [1, 2]


def test_matrix_suppression_gives_the_box_by_box_clusters() -> None:
    """Suppression from one IoU matrix (up to NMS_MATRIX_MAX candidates) equals the greedy box-by-box loop."""
    from engines.detectors import _nms_clusters_boxwise

    rng = np.random.default_rng(1)
    for n in (2, 7, 60, 300):
        xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
        size = rng.uniform(5, 60, (n, 1)).astype(np.float32)
        boxes = np.hstack([xy, xy + size])
        scores = rng.choice(np.linspace(0.5, 1.0, 20), n).astype(np.float32)  # ties, to check the order too
        for iou in (0.3, 0.5):
            fast = nms_clusters(boxes, scores, iou)
            slow = _nms_clusters_boxwise(boxes, iou, np.argsort(-scores, kind="stable"))
            assert len(fast) == len(slow) > 1
            assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_suppression_of_a_step_gives_each_frames_clusters() -> None:
    """All frames suppressed at once (nms_clusters_frames) give each frame's nms_clusters, in frame order, for
    frames with no candidate, one, ties of score, and more than STEP_NMS_MAX (suppressed on their own)."""
    from engines.detectors import STEP_NMS_MAX, nms_clusters_frames

    rng = np.random.default_rng(2)
    counts = [0, 1, 7, 0, STEP_NMS_MAX, STEP_NMS_MAX + 40, 30, 0]
    frame = np.repeat(np.arange(len(counts)), counts)
    n = len(frame)
    xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
    boxes = np.hstack([xy, xy + rng.uniform(5, 60, (n, 1)).astype(np.float32)])
    scores = rng.choice(np.linspace(0.5, 1.0, 20), n).astype(np.float32)
    for iou in (0.3, 0.5):
        members, sizes, cluster_frame = nms_clusters_frames(boxes, scores, frame, iou)
        got = np.split(members, np.cumsum(sizes)[:-1])
        want, want_frames = [], []
        for f in range(len(counts)):
            local = np.flatnonzero(frame == f)
            clusters = nms_clusters(boxes[local], scores[local], iou)
            want += [local[c] for c in clusters]
            want_frames += [f] * len(clusters)
        assert len(got) == len(want) > len(counts)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
        assert cluster_frame.tolist() == want_frames


def test_overlapping_candidates_blend_into_one_face_by_score(engines: Engines) -> None:
    """Weighted suppression: one face per cluster, box and keypoints the score-weighted mean, best score."""
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[:, :, 0] = boxes[:, :1] + 3
    dets = engines.faces._merge([(boxes[:2], scores[:2], kps[:2], np.zeros(2, np.int64)),
                                (boxes[2:], scores[2:], kps[2:], np.zeros(1, np.int64))], 1)[0]
    np.testing.assert_allclose(dets.boxes, [[0.8, 0, 10.8, 10], [50, 50, 60, 60]], atol=1e-5)
    np.testing.assert_allclose(dets.scores, [0.9, 0.7])
    np.testing.assert_allclose(dets.keypoints[:, :, 0], [[3.8] * 6, [53] * 6], atol=1e-5)


def test_detector_plans_are_cached(engines: Engines) -> None:
    det: FaceDetector = engines.faces
    assert det.plan(720, 1280) is det.plan(720, 1280)


def test_input_shapes_are_the_padded_level_canvases(engines: Engines) -> None:
    """What the GPU warm-up sets up before the first run: one shape per level, each batch padded to the
    detector's batch size; with tiles, the finest level's tile batch and its whole canvas in batches of
    FINE_CANVAS_BATCH instead (on a CPU prepare() has nothing to set up)."""
    det: FaceDetector = engines.faces
    shapes = det.input_shapes(1080, 1920)
    levels = det.plan(1080, 1920)
    whole = FaceDetector(det.session, batch_size=det.batch_size).input_shapes(1080, 1920)
    assert whole == [(det.batch_size, lv.canvas_h, lv.canvas_w, 3) for lv in levels]
    assert whole[0] == (det.batch_size, 800, 1376, 3) and len(set(whole)) == 4
    assert shapes == [(det.batch_size, FINE_TILE, FINE_TILE, 3), (FINE_CANVAS_BATCH, 800, 1376, 3), *whole[1:]]
    det.prepare(1080, 1920)
    assert det._prepared == set()
