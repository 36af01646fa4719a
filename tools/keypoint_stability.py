"""How far a face's embedding moves when its photo is shifted by a few pixels (CPU engines).

    VIDX_CACHE_DIR=... python3 tools/keypoint_stability.py

Alignment follows the detector's keypoints, so this measures how steady the keypoints are: for each
portrait, the L2 distance between the largest face's embedding in the photo and in the photo shifted
down/right by (3, 0), (0, 3), (5, 7) and (1, 2) px (black fills the gap). Also prints the identity
distances between the portraits. Results: docs/models.md ("Keypoint stability").
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHIFTS = ((3, 0), (0, 3), (5, 7), (1, 2))
PORTRAITS = ("obama", "obama2", "obama3", "biden")


def main() -> None:
    from engines.loader import load_engines
    from engines.verify import largest_face_embedding, load_photo
    from engines.zoo import ModelStore
    from schemas.config import DetectionConfig, RuntimeConfig

    store = ModelStore()
    engines = load_engines(DetectionConfig(), RuntimeConfig(device="cpu"), store=store, warm_up=False)
    embeddings = {}
    for name in PORTRAITS:
        image = load_photo(name, store.cache_dir)
        _, base = largest_face_embedding(engines, image)
        assert base is not None, name
        embeddings[name] = base
        moved = []
        for dy, dx in SHIFTS:
            shifted = np.ascontiguousarray(np.pad(image, ((dy, 0), (dx, 0), (0, 0)))[:image.shape[0], :image.shape[1]])
            _, emb = largest_face_embedding(engines, shifted)
            moved.append(float(np.linalg.norm(base - emb)) if emb is not None else float("nan"))
        print(f"{name:7s} shifted: mean {np.mean(moved):.3f}, max {np.max(moved):.3f}  "
              f"({', '.join(f'{d:.3f}' for d in moved)})")
    for a, b in (("obama", "obama2"), ("obama", "obama3"), ("obama2", "obama3"), ("obama", "biden")):
        print(f"{a} - {b}: {np.linalg.norm(embeddings[a] - embeddings[b]):.3f}")


if __name__ == "__main__":
    main()
