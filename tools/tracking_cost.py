"""What tracking costs per analysed frame on the host: synthetic scenes (people walking, faces on them,
descriptors with noise) through the person tracker, face-to-person ownership, face quality and the face
tracker, as the pipeline calls them; optionally against another version of indexer/tracking.py (same ids?).

    PYTHONPATH=. python tools/tracking_cost.py [--against OLD_TRACKING_PY]
    (e.g. git show REV:indexer/tracking.py > /tmp/tracking_old.py; ... --against /tmp/tracking_old.py)

Two scenes of 900 frames at 30 fps: about one person and one face per frame, and a crowd (about six people
and five faces per frame). One line per scene: milliseconds per frame (best of 3), and with --against the
other version's, and whether both gave the same person and face track ids, owners and track descriptors.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from indexer import tracking
from schemas.config import PersonTrackingConfig, TrackingConfig

Frame = tuple[float, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray | None], np.ndarray, np.ndarray, np.ndarray]


def scene(seed: int, people: int, frames: int = 900, fps: float = 30.0) -> list[Frame]:
    """Per frame: time, person boxes and scores, face boxes, descriptors (None: not embedded), keypoints,
    sharpness and scores. `people` x 3 identities come and go, each walking at its own speed."""
    rng = np.random.default_rng(seed)
    n = people * 3
    ids = rng.normal(size=(n, 128)).astype(np.float32)
    ids *= 0.9 / np.linalg.norm(ids, axis=1, keepdims=True)
    life = [(int(rng.integers(0, frames)), int(rng.integers(60, 600))) for _ in range(n)]
    pos, vel = rng.uniform(100, 1700, size=(n, 2)), rng.uniform(-60, 60, size=(n, 2))
    out: list[Frame] = []
    for f in range(frames):
        t = f / fps
        pb, fb, emb = [], [], []
        for k in (k for k, (start, length) in enumerate(life) if start <= f < start + length):
            c = pos[k] + vel[k] * t + rng.normal(0, 2, 2)
            h = 400 + 20 * np.sin(f / 10 + k)
            pb.append([c[0] - h / 4, c[1] - h / 2, c[0] + h / 4, c[1] + h / 2])
            if rng.random() < 0.85:
                s = 60 + rng.normal(0, 2)
                fb.append([c[0] - s / 2, c[1] - h / 2 + 10, c[0] + s / 2, c[1] - h / 2 + 10 + s])
                emb.append(ids[k] + rng.normal(0, 0.02, 128).astype(np.float32) if rng.random() < 0.9 else None)
        persons = np.asarray(pb, np.float32).reshape(-1, 4)
        faces = np.asarray(fb, np.float32).reshape(-1, 4)
        kps = np.zeros((len(faces), 6, 2), np.float32)
        kps[:, 0, 0], kps[:, 1, 0] = faces[:, 0] + 15, faces[:, 2] - 15  # eyes
        kps[:, 2, 0] = (faces[:, 0] + faces[:, 2]) / 2 + 3  # nose, a little off centre
        out.append((t, persons, rng.uniform(0.5, 0.9, len(persons)).astype(np.float32), faces, emb, kps,
                    rng.uniform(50, 300, len(faces)).astype(np.float32),
                    rng.uniform(0.6, 0.99, len(faces)).astype(np.float32)))
    return out


def replay(module: ModuleType, frames: list[Frame]) -> tuple[float, Any]:
    """Seconds for the scene, and everything the trackers decided."""
    faces, persons = module.FaceTracker(TrackingConfig()), module.PersonTracker(PersonTrackingConfig())
    decided, row = [], 0
    t0 = time.perf_counter()
    for t, pb, ps, fb, emb, kps, sharp, scores in frames:
        people = persons.update(t, list(range(row, row + len(pb))), pb, ps)
        row += len(pb)
        owner = module.person_of_faces(fb, pb)
        quality = module.face_quality(fb, kps, sharp, scores)
        ids = faces.update(t, list(range(len(fb))), fb, emb, quality)
        decided.append((tuple(people), tuple(ids), tuple(owner.tolist())))
    seconds = time.perf_counter() - t0
    tracks = [(tr.best_face, tr.n_faces, np.round(tr.embedding, 5).tolist()) for tr in faces.tracks]
    return seconds, (decided, tracks, [(tr.best_row, tr.n_detections) for tr in persons.tracks])


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tracking_against", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, default=None, help="another indexer/tracking.py to compare with")
    args = parser.parse_args()
    other = load(args.against) if args.against else None
    for name, people in (("one person", 1), ("crowd", 8)):
        frames = scene(1, people)
        per_frame = (sum(len(f[1]) for f in frames) / len(frames), sum(len(f[3]) for f in frames) / len(frames))
        runs = [replay(tracking, frames) for _ in range(3)]
        line = f"{name}: {per_frame[0]:.1f} people, {per_frame[1]:.1f} faces per frame: " \
               f"{1000 * min(s for s, _ in runs) / len(frames):.3f} ms per frame"
        if other is not None:
            against = [replay(other, frames) for _ in range(3)]
            line += f"; --against {1000 * min(s for s, _ in against) / len(frames):.3f} ms, " \
                    f"same decisions: {runs[0][1] == against[0][1]}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
