"""Linking faces into tracks: embedding distance, with a looser bound where the face stays in place."""

from __future__ import annotations

import numpy as np

from indexer.tracking import FaceTracker
from schemas.config import TrackingConfig


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
