"""Frames with real faces at known places, and where a detector found them (shared by the detector tests)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engines.detectors import Detections


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
