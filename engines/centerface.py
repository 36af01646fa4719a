"""CenterFace: a full-frame, single-pass face detector with five landmarks, as a drop-in FaceDetector.

The graph (engines.convert.centerface_onnx) takes any multiple of 32 in height and width and answers per
4 x 4 pixel cell: a face-centre heatmap, the box size, a sub-cell offset and five landmarks. A frame is one
model input (full size for --min-face 24, scaled down only as far as the smallest face asked for stays
found; on a black canvas rounded up to multiples of 32), batched and placed on
the canvas exactly as BlazeFace's pyramid levels are (engines.detectors.BlazeDetector: CPU and GPU paths,
fixed GPU batch padded with black images, one input shape per frame size). Cells above the threshold are
decoded on the array module of the session; the candidates are merged on the host by the same weighted
suppression as BlazeFace's, which steadies the keypoints alignment follows.

Keypoints come out in FaceDetector's six-point layout (engines.detectors.FACE_KEYPOINTS): right eye, left
eye (the subject's: the right eye is on the image's left), nose tip, mouth (the mean of CenterFace's two
mouth corners), right ear and left ear. CenterFace has no ears: they are NaN. Alignment reads only the first
four points, and the Parquet `faces.keypoints` column stores NaN as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines.arrays import Array, array_module, to_host
from engines.detectors import FACE_KEYPOINTS, AnchorSpec, BlazeDetector, Level, RawCandidates, plan_levels
from engines.runtime.base import Session

STRIDE = 4
"""Input pixels per output cell."""
GRID = AnchorSpec(size=32, strides=(STRIDE,), per_cell=(1,), align=32)
"""Only `align` (inputs are multiples of 32) is used: CenterFace decodes cells, not anchors."""
MODEL_MIN_FACE_PX = 10.0
"""Boxes narrower than this (model pixels) are dropped: under half the smallest face measured (22 px), so no
face of --min-face size is lost, while specks of texture are."""
DEFAULT_SCORE = 0.5
"""Heatmap threshold; docs/models.md has the measurement behind it."""
RELIABLE_FACE_PX = 24.0
"""Face width (model pixels, BlazeFace-style box) found every time: on synthetic 1080p frames 48 of 48 faces of
22-96 px at full size, but 46/48 at 24 px scaled 0.75 (18 model px) and 1/48 at 24 px scaled 0.5; so a frame is
scaled by RELIABLE_FACE_PX / min_face_px, at most 1 (full size for the default 24 px; docs/models.md)."""


class CenterFaceDetector(BlazeDetector):
    """CenterFace over whole frames, with FaceDetector's interface and keypoint layout."""

    def __init__(self, session: Session, *, score_threshold: float = DEFAULT_SCORE, min_face_px: int = 24,
                 batch_size: int = 4, scale: float | None = None):
        super().__init__(session, GRID, len(FACE_KEYPOINTS), score_threshold, batch_size=batch_size,
                         min_box=MODEL_MIN_FACE_PX)
        self.min_face_px = min_face_px
        self.scale = min(1.0, RELIABLE_FACE_PX / min_face_px) if scale is None else scale

    def _plan(self, height: int, width: int) -> list[Level]:
        return plan_levels(height, width, [self.scale], align=self.anchors.align, margin=0)

    def _queue(self, batch: Array, level: Level) -> Callable[[], RawCandidates]:
        """Model + cell decoding + threshold for a batch, done at once: candidates in canvas pixels, on the host
        (boxes N x 4, scores N, keypoints N x 6 x 2, the batch image of each N), brought back in one transfer."""
        xp = array_module(batch)
        out = self.session.run({"image": batch})
        heat, size, offset, marks = out["heatmap"], out["scale"], out["offset"], out["landmarks"]
        b, r, c = xp.nonzero(heat[:, 0] >= self.score_threshold)
        h = xp.exp(size[b, 0, r, c]) * STRIDE
        w = xp.exp(size[b, 1, r, c]) * STRIDE
        y0 = (r + offset[b, 0, r, c] + 0.5) * STRIDE - h / 2
        x0 = (c + offset[b, 1, r, c] + 0.5) * STRIDE - w / 2
        lm = marks[b, :, r, c]  # K x 10: (y, x) pairs in box units from the top-left corner
        ys, xs = lm[:, 0::2] * h[:, None] + y0[:, None], lm[:, 1::2] * w[:, None] + x0[:, None]
        nan = xp.full_like(x0, xp.nan)
        kps = [xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1], xs[:, 2], ys[:, 2],
               (xs[:, 3] + xs[:, 4]) / 2, (ys[:, 3] + ys[:, 4]) / 2, nan, nan, nan, nan]
        packed = xp.stack([x0, y0, x0 + w, y0 + h, heat[b, 0, r, c], *kps, b.astype(x0.dtype)],
                          1).astype(xp.float32)
        host = to_host(packed)
        k = self.n_keypoints
        done = (host[:, :4], host[:, 4], host[:, 5:5 + 2 * k].reshape(-1, k, 2), host[:, 5 + 2 * k].astype(np.int64))
        return lambda: done
