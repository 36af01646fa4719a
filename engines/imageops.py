"""Image operations the models need, for host (numpy) and device (CuPy) arrays.

Host arrays go through Pillow, whose resampling is antialiased and fast on a CPU; device arrays go
through CUDA kernels (`engines.cuda_ops`). Callers never branch on the device.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from engines.arrays import Array, array_module, to_host


def resize(img: Array, out_h: int, out_w: int) -> Array:
    """Antialiased resize of an HxWx3 uint8 image."""
    if array_module(img) is np:
        if img.shape[0] == out_h and img.shape[1] == out_w:
            return img
        pil = Image.fromarray(np.ascontiguousarray(img))
        return np.asarray(pil.resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=3.0))
    import engines.cuda_ops as cuda_ops

    return cuda_ops.resize(img, out_h, out_w)


def warp_affine(img: Array, src_from_dst: np.ndarray, size: int) -> Array:
    """A size x size chip: chip pixel (x, y) samples img at src_from_dst @ (x, y, 1).

    Downscaling by more than 2x first shrinks the source region with an antialiased resize, so a
    large face gives the same chip as a small one (dlib uses an image pyramid for the same reason).
    """
    if array_module(img) is not np:
        import engines.cuda_ops as cuda_ops

        return cuda_ops.warp_affine(img, src_from_dst[None], [0], size)[0]
    m = np.asarray(src_from_dst, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    pil = Image.fromarray(np.ascontiguousarray(img))
    if scale > 2.0:
        corners = m @ np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], float).T
        x0, y0 = np.floor(corners.min(axis=1)).astype(int)
        x1, y1 = np.ceil(corners.max(axis=1)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, img.shape[1]), min(y1, img.shape[0])
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            shrink = scale / 1.5
            nw, nh = max(1, round((x1 - x0) / shrink)), max(1, round((y1 - y0) / shrink))
            pil = pil.resize((nw, nh), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
            to_region = np.array([[nw / (x1 - x0), 0, -x0 * nw / (x1 - x0)],
                                  [0, nh / (y1 - y0), -y0 * nh / (y1 - y0)],
                                  [0, 0, 1]])
            m = (to_region @ np.vstack([m, [0, 0, 1]]))[:2]
    # Pillow samples at pixel centres for AFFINE; shift so that chip pixel centres map like cv2's.
    centre = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m_pil = (centre @ np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(centre))[:2]
    data = tuple(float(v) for v in m_pil.ravel())
    chip = pil.transform((size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(chip)


def warp_affine_batch(frames: list[Array], src_from_dst: np.ndarray, frame_index: list[int], size: int) -> Array:
    """Chips for many faces of many frames at once: K x size x size x 3."""
    if not len(frame_index):
        xp = array_module(frames[0]) if frames else np
        return xp.zeros((0, size, size, 3), dtype=np.uint8)
    if array_module(frames[0]) is not np:
        import engines.cuda_ops as cuda_ops

        return cuda_ops.warp_affine_frames(frames, src_from_dst, frame_index, size)
    return np.stack([warp_affine(frames[f], m, size) for f, m in zip(frame_index, src_from_dst, strict=True)])


def laplacian_variance(chips: Array) -> np.ndarray:
    """Sharpness of each chip: variance of the 4-neighbour Laplacian of its grey image (host floats)."""
    return np.asarray(to_host(sharpness(chips)), np.float32)


def sharpness(chips: Array) -> Array:
    """`laplacian_variance` on the chips' own array module: K float32, on the device for device chips (queued,
    not waited for)."""
    xp = array_module(chips)
    if len(chips) == 0:
        return xp.zeros(0, xp.float32)
    if xp is not np:  # one launch; the array operations below were ~10 kernels in float64
        import engines.cuda_ops as cuda_ops

        return cuda_ops.chip_sharpness(chips)
    grey = chips[..., 0] * 0.299 + chips[..., 1] * 0.587 + chips[..., 2] * 0.114
    lap = (grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1]
           - 4 * grey[:, 1:-1, 1:-1])
    return np.asarray(lap.reshape(len(chips), -1).var(axis=1), dtype=np.float32)
