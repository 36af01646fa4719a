"""dlib's ResNet face descriptor: alignment to its 150x150 chip, then a 128-D embedding.

Alignment maps four BlazeFace keypoints (eyes, nose tip, mouth centre) onto where dlib's mean face
puts them in a chip with 25% padding, by a least-squares similarity transform. Descriptors of the
same person lie closer than 0.6 in L2 (dlib's threshold, on the raw, unnormalised descriptor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engines.arrays import Array, array_module, padded_batch, to_host
from engines.imageops import laplacian_variance, sharpness, warp_affine_batch
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


def chips_from_frames(keypoints: np.ndarray) -> np.ndarray:
    """For K faces' keypoints (K x P x 2, the first four used): K 2x3 maps from chip pixels to frame pixels.

    The map is the inverse of the least-squares similarity (rotation, uniform scale, translation) taking a
    face's four points onto dlib's chip points (what Umeyama's method gives), solved for all faces at once
    in closed form: as complex numbers, chip = a * frame + t with a = sum(conj(s) d) / sum(|s|^2) over the
    centred points s (frame) and d (chip).
    """
    if len(keypoints) == 0:
        return np.zeros((0, 2, 3))
    kps = np.asarray(keypoints, np.float64).reshape(len(keypoints), -1, 2)[:, :4]
    dst = chip_points()
    s = kps[..., 0] + 1j * kps[..., 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sc = s - s.mean(axis=1, keepdims=True)
    dc = d - d.mean()
    var = (np.abs(sc) ** 2).sum(axis=1)
    a = (np.conj(sc) * dc).sum(axis=1) / np.where(var > 0, var, 1.0)
    a = np.where((var > 0) & (a != 0), a, 1.0)  # all four points on one spot: no rotation or scale to find
    t = d.mean() - a * s.mean(axis=1)
    inv_a, inv_t = 1.0 / a, -t / a  # frame = chip / a - t / a
    return np.stack([np.stack([inv_a.real, -inv_a.imag, inv_t.real], axis=1),
                     np.stack([inv_a.imag, inv_a.real, inv_t.imag], axis=1)], axis=1)


class FaceEmbedder:
    """Chips in, descriptors out; chips are cut on the device the frames live on."""

    def __init__(self, session: Session, *, batch_size: int = 64):
        self.session = session
        self.batch_size = batch_size

    def chips(self, frames: Sequence[Array], frame_index: Sequence[int], keypoints: np.ndarray) -> Array:
        """K aligned 150x150x3 uint8 chips for K faces (frame_index[k] says in which frame)."""
        maps = chips_from_frames(keypoints)
        xp = session_array_module(self.session)
        return warp_affine_batch([xp.asarray(f) for f in frames], maps, list(frame_index), CHIP_SIZE)

    def embed_chips(self, chips: Array) -> np.ndarray:
        """K x 128 float32 raw descriptors, on the host."""
        return np.asarray(to_host(self._descriptors(chips)), np.float32)

    def embed_sharp(self, chips: Array, min_sharpness: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each chip's sharpness (imageops.laplacian_variance), whether it reaches `min_sharpness`, and the
        descriptors of those that do (K x 128 float32, zeros for the others), all on the host. On a GPU every chip
        is embedded and the sharpness comes back with the descriptors in one copy (embedding a blurred chip costs
        less than a wait for the sharpness before embedding); on a CPU only the sharp chips are embedded."""
        k = len(chips)
        xp = array_module(chips)
        if xp is np or k == 0:
            sharp = laplacian_variance(chips)
            ok = sharp >= min_sharpness
            embeddings = np.zeros((k, 128), np.float32)
            if ok.any():
                embeddings[ok] = self.embed_chips(chips[np.flatnonzero(ok)])
            return sharp, ok, embeddings
        descriptors = self._descriptors(chips).astype(xp.float32, copy=False)
        both = to_host(xp.concatenate([sharpness(chips)[:, None], descriptors], 1))
        sharp = np.ascontiguousarray(both[:, 0])
        ok = sharp >= min_sharpness
        return sharp, ok, np.where(ok[:, None], both[:, 1:], np.float32(0)).astype(np.float32)

    def _descriptors(self, chips: Array) -> Array:
        """K x 128 raw descriptors on the session's array module (on a GPU queued, not waited for)."""
        xp = session_array_module(self.session)
        if len(chips) == 0:
            return xp.zeros((0, 128), xp.float32)
        chips = xp.asarray(chips)
        parts = []
        for start in range(0, len(chips), self.batch_size):
            part = chips[start:start + self.batch_size]
            n = len(part)
            if xp is not np:  # a few fixed batch shapes on the GPU (each new shape costs seconds of set-up)
                size = padded_batch(n, self.batch_size)
                if size > n:
                    part = xp.concatenate([part, xp.zeros((size - n, *part.shape[1:]), part.dtype)])
            parts.append(self.session.run({"chips": part})["embedding"][:n])
        return xp.concatenate(parts) if len(parts) > 1 else parts[0]

    def embed(self, frames: Sequence[Array], frame_index: Sequence[int], keypoints: np.ndarray
              ) -> tuple[np.ndarray, Array]:
        chips = self.chips(frames, frame_index, keypoints)
        return self.embed_chips(chips), chips
