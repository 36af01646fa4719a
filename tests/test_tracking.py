"""Linking faces into tracks (embedding distance, with a looser bound where the face stays in place) and
person boxes into person tracks (overlap with the predicted box), and faces to the bodies they are on."""

from __future__ import annotations

import numpy as np

from indexer.tracking import FaceTracker, PersonTracker, person_of_faces
from schemas.config import PersonTrackingConfig, TrackingConfig
from search.timeline import PersonSpan, count_segments


def _at_distance(base: np.ndarray, d: float, seed: int) -> np.ndarray:
    """A descriptor exactly d (L2) from base."""
    step = np.random.default_rng(seed).normal(size=base.shape)
    return (base + d * step / np.linalg.norm(step)).astype(np.float32)


def test_a_turning_head_stays_one_track_where_it_is_but_not_elsewhere() -> None:
    base = np.random.default_rng(0).normal(0, 0.1, 128).astype(np.float32)
    here = np.array([100, 100, 150, 150], np.float32)
    there = np.array([400, 100, 450, 150], np.float32)
    tracker = FaceTracker(TrackingConfig())
    q = np.ones(1, np.float32)
    first = tracker.update(0.0, [0], here[None], [base], q)
    # 0.6 from the track: too far for the plain threshold (0.55), near enough in place (0.7)
    assert tracker.update(0.5, [1], here[None] + 3, [_at_distance(base, 0.6, 1)], q) == first
    # the same distance at another place starts a new track
    assert tracker.update(1.0, [2], there[None], [_at_distance(base, 0.6, 2)], q) != first
    # a different person (0.8 away) in place starts a new track too
    assert tracker.update(1.5, [3], here[None], [_at_distance(base, 0.8, 3)], q) not in (first, [1])
    assert len(tracker.tracks) == 3


def _box(cx: float, cy: float, w: float = 40, h: float = 100) -> np.ndarray:
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


def _people(*boxes: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    return list(range(len(boxes))), np.stack(boxes), np.full(len(boxes), 0.9, np.float32)


def test_walkers_keep_their_tracks_when_they_pass_each_other() -> None:
    """Two people walking towards each other at 2 samples per second: each keeps its own track through the
    crossing, because the track's box is moved on by its velocity before the overlap is measured."""
    tracker = PersonTracker(PersonTrackingConfig())
    ids = []
    for step in range(9):
        t = step * 0.5
        a, b = _box(100 + 30 * step, 200), _box(340 - 30 * step, 205)
        ids.append(tracker.update(t, *_people(a, b)))
    assert len(tracker.tracks) == 2
    assert all(row == ids[0] for row in ids)
    assert [(tr.start_s, tr.end_s, tr.n_detections) for tr in tracker.kept()] == [(0.0, 4.0, 9), (0.0, 4.0, 9)]


def test_people_seated_close_together_keep_their_tracks_by_the_faces_on_them() -> None:
    """Two people side by side whose boxes change shape between samples (one leans towards the other): by
    position alone the leaning one's box continues the other's track and the other starts a new one; the
    face on each box keeps each person on their own track."""
    def run(faces: list[list[int]] | None) -> list[list[int]]:
        tracker = PersonTracker(PersonTrackingConfig())
        ids = []
        for step, (a, b) in enumerate([(100, 160), (100, 160), (60, 105)]):  # then A shifts left, B leans left
            rows, boxes, scores = _people(_box(a, 200, 80), _box(b, 200, 80))
            ids.append(tracker.update(step * 0.1, rows, boxes, scores, faces[step] if faces else None))
        return ids

    assert run(None)[-1] == [2, 0]  # by position: B's box is nearest A's track, A's box too far from it
    assert run([[7, 9], [7, 9], [7, 9]]) == [[0, 1]] * 3  # face 7 on A's box, face 9 on B's
    # a box whose face is unknown is linked by position, as before
    assert run([[7, 9], [7, 9], [-1, -1]])[-1] == [2, 0]


def test_a_person_gone_longer_than_the_gap_comes_back_as_a_new_track() -> None:
    tracker = PersonTracker(PersonTrackingConfig(max_gap_s=2.0))
    first = tracker.update(0.0, *_people(_box(100, 200)))
    assert tracker.update(0.5, *_people(_box(104, 200))) == first
    assert tracker.update(1.5, *_people(_box(106, 200))) == first  # a missed sample or two: same track
    assert tracker.update(5.0, *_people(_box(106, 200))) != first  # 3.5 s unseen: someone new, or back later
    assert len(tracker.tracks) == 2


def test_a_box_seen_once_is_not_kept_as_a_person_track() -> None:
    tracker = PersonTracker(PersonTrackingConfig(min_detections=2))
    tracker.update(0.0, *_people(_box(100, 200), _box(500, 200)))
    tracker.update(0.5, *_people(_box(102, 200)))
    assert [tr.track_index for tr in tracker.kept()] == [0]


def test_a_face_belongs_to_the_narrowest_body_whose_upper_half_holds_it() -> None:
    near = _box(200, 300, w=120, h=300)  # a person close to the camera
    far = _box(230, 240, w=40, h=110)  # a smaller person behind, their head inside the near person's box
    faces = np.stack([
        _box(230, 200, w=14, h=16),  # the far person's head
        _box(190, 180, w=40, h=46),  # the near person's head
        _box(200, 420, w=20, h=20),  # something at belt height: no one's face
        _box(700, 100, w=20, h=20),  # outside every body
    ])
    assert person_of_faces(faces, np.stack([near, far])).tolist() == [1, 0, -1, -1]
    assert person_of_faces(faces, np.zeros((0, 4), np.float32)).tolist() == [-1, -1, -1, -1]


def test_head_counts_over_time_come_from_the_person_tracks() -> None:
    spans = [PersonSpan("1-p0", 0.0, 4.0, 9, None), PersonSpan("1-p1", 1.0, 2.0, 3, None),
             PersonSpan("1-p2", 6.0, 7.0, 3, None)]
    assert [(s.start_s, s.end_s, s.people) for s in count_segments(spans)] == [
        (0.0, 1.0, 1), (1.0, 2.0, 2), (2.0, 4.0, 1), (6.0, 7.0, 1)]


def _face(cx: float, cy: float, w: float = 50) -> np.ndarray:
    return np.array([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], np.float32)


def _identities(n: int, apart: float = 0.8) -> list[np.ndarray]:
    """n descriptors, each pair about `apart` from each other (different people on dlib's scale)."""
    rng = np.random.default_rng(7)
    base = rng.normal(0, 0.1, 128).astype(np.float32)
    return [_at_distance(base, apart / np.sqrt(2), 100 + i) for i in range(n)]


def test_faces_that_cross_keep_their_tracks() -> None:
    """Two people walk past each other: at the crossing their boxes overlap, but each face keeps its own
    track because the descriptor decides, not the position."""
    a, b = _identities(2)
    tracker = FaceTracker(TrackingConfig())
    q = np.ones(2, np.float32)
    ids = []
    for step in range(7):
        xa, xb = 100 + 40 * step, 340 - 40 * step
        noise = [_at_distance(a, 0.2, 10 + step), _at_distance(b, 0.2, 20 + step)]
        ids.append(tracker.update(step * 0.5, [2 * step, 2 * step + 1], np.stack([_face(xa, 100), _face(xb, 104)]),
                                  noise, q))
    assert all(row == ids[0] for row in ids) and len(tracker.tracks) == 2


def test_a_face_hidden_for_a_moment_continues_its_track_but_one_gone_too_long_starts_anew() -> None:
    (a,) = _identities(1)
    q = np.ones(1, np.float32)
    tracker = FaceTracker(TrackingConfig(max_gap_s=2.5))
    first = tracker.update(0.0, [0], _face(100, 100)[None], [a], q)
    assert tracker.update(2.0, [1], _face(110, 100)[None], [_at_distance(a, 0.3, 1)], q) == first  # occluded 2 s
    assert tracker.update(8.0, [2], _face(110, 100)[None], [_at_distance(a, 0.3, 2)], q) != first  # back after 6 s
    assert [(t.start_s, t.end_s, t.n_faces) for t in tracker.tracks] == [(0.0, 2.0, 2), (8.0, 8.0, 1)]


def test_two_similar_people_side_by_side_get_two_tracks() -> None:
    """Two different people whose descriptors are close (0.5 apart, under the in-place bound) in one frame:
    one sample's faces never share a track, and each later face goes to its nearer track."""
    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.1, 128).astype(np.float32)
    b = _at_distance(a, 0.5, 4)
    q = np.ones(2, np.float32)
    tracker = FaceTracker(TrackingConfig())
    first = tracker.update(0.0, [0, 1], np.stack([_face(100, 100), _face(170, 100)]), [a, b], q)
    assert len(set(first)) == 2
    later = tracker.update(0.5, [2, 3], np.stack([_face(172, 100), _face(102, 100)]),
                           [_at_distance(b, 0.1, 5), _at_distance(a, 0.1, 6)], q)
    assert later == [first[1], first[0]]


def test_faces_too_small_to_embed_follow_a_track_by_position_only() -> None:
    (a,) = _identities(1)
    q = np.ones(1, np.float32)
    tracker = FaceTracker(TrackingConfig())
    first = tracker.update(0.0, [0], _face(100, 100)[None], [a], q)
    assert tracker.update(0.5, [1], _face(104, 100)[None], [None], q) == first  # overlaps: same track
    assert tracker.update(1.0, [2], _face(400, 100)[None], [None], q) == [-1]  # elsewhere: no track
    assert tracker.tracks[0].n_faces == 2 and tracker.tracks[0].n_embedded == 1
