"""How a 128-D face descriptor is stored as bytes in the SQL index (little-endian float32).

Apart from schemas.sql so that a worker process can encode descriptors without importing SQLAlchemy.
"""

from __future__ import annotations

import numpy as np


def embedding_to_bytes(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def embedding_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")
