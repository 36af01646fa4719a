"""dlib's ResNet face descriptor: alignment to its 150x150 chip, then a 128-D embedding.

Alignment maps four BlazeFace keypoints (eyes, nose tip, mouth centre) onto where dlib's mean face
puts them in a chip with 25% padding, by a least-squares similarity transform. Descriptors of the
same person lie closer than 0.6 in L2 (dlib's threshold, on the raw, unnormalised descriptor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engines.arrays import Array, to_host
from engines.imageops import warp_affine_batch
from engines.runtime.base import Session, session_array_module

CHIP_SIZE = 150
CHIP_PADDING = 0.25
MEAN_FACE_POINTS = np.array([
    [0.225492, 0.215990],  # right eye centre (appears on the image's left)
    [0.754761, 0.215990],  # left eye centre
    [0.490127, 0.515625],  # nose tip
    [0.490127, 0.804225],  # mouth centre
])
"""dlib's mean face shape (get_face_chip_details), averaged over each feature's landmarks, in [0, 1]."""
SAME_PERSON_L2 = 0.6


def chip_points(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    return (padding + MEAN_FACE_POINTS) / (1 + 2 * padding) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + translation that best maps src points onto dst (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    var = (sc ** 2).sum() / len(src)
    scale = (sig * d).sum() / var if var > 0 else 1.0
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def chip_from_frame(keypoints: np.ndarray) -> np.ndarray:
    """For a face's keypoints (P x 2, first four used): the 2x3 map from chip pixels to frame pixels."""
    fwd = similarity_transform(keypoints[:4], chip_points())
    return np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]


def padded_batch(n: int, limit: int, smallest: int = 8) -> int:
    """The batch size n is padded to on a GPU: the next power of two from `smallest`, at most `limit`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, limit) if n <= limit else n


class FaceEmbedder:
    """Chips in, descriptors out; chips are cut on the device the frames live on."""

    def __init__(self, session: Session, *, batch_size: int = 64):
        self.session = session
        self.batch_size = batch_size

    def chips(self, frames: Sequence[Array], frame_index: Sequence[int], keypoints: np.ndarray) -> Array:
        """K aligned 150x150x3 uint8 chips for K faces (frame_index[k] says in which frame)."""
        maps = np.stack([chip_from_frame(k) for k in keypoints]) if len(keypoints) else np.zeros((0, 2, 3))
        xp = session_array_module(self.session)
        return warp_affine_batch([xp.asarray(f) for f in frames], maps, list(frame_index), CHIP_SIZE)

    def embed_chips(self, chips: Array) -> np.ndarray:
        """K x 128 float32 raw descriptors, on the host."""
        if len(chips) == 0:
            return np.zeros((0, 128), np.float32)
        xp = session_array_module(self.session)
        chips = xp.asarray(chips)
        parts = []
        for start in range(0, len(chips), self.batch_size):
            part = chips[start:start + self.batch_size]
            n = len(part)
            if xp is not np:  # a few fixed batch shapes on the GPU (each new shape costs seconds of set-up)
                size = padded_batch(n, self.batch_size)
                if size > n:
                    part = xp.concatenate([part, xp.zeros((size - n, *part.shape[1:]), part.dtype)])
            out = self.session.run({"chips": part})
            parts.append(to_host(out["embedding"])[:n])
        return np.concatenate(parts).astype(np.float32)

    def embed(self, frames: Sequence[Array], frame_index: Sequence[int], keypoints: np.ndarray
              ) -> tuple[np.ndarray, Array]:
        chips = self.chips(frames, frame_index, keypoints)
        return self.embed_chips(chips), chips
