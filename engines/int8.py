"""INT8 copies of models for the CPU, made by vidx from the converted FP32 graph.

ONNX Runtime's static quantization (QDQ: per-channel INT8 weights on 7 bits, UINT8 activations, ranges from
min-max calibration) over inputs the model really sees: the bundled photos placed on 1080p and 576p frames at three
sizes, cut into the detector's own level canvases. The copy is cached beside the model, named by the
model's ONNX hash, the recipe and the ONNX Runtime version, and written whole (a temporary file renamed):
it is made once, on first use.

Only the person detector has an INT8 copy, run on a CPU with `--engine onnxruntime-int8`: on a 2-core
AVX-512 CPU it runs 1.8-2.6x faster and finds the same people in the same places (also on vtest.avi, which
calibration never sees), but its boxes differ by a few pixels, and in a crowd at 2 samples per second that
cuts person tracks at other places; so it is not the default (docs/models.md). The weights keep 7 bits
(`reduce_range`): on x86 CPUs without VNNI instructions (AVX2 only) ONNX Runtime multiplies UINT8 by INT8 in
16-bit sums that saturate with 8-bit weights, and such a copy found 4 of the 6 people in t1.jpg on a 2-core
AVX2 CPU where FP32 finds all 6; with 7 bits it finds the 6. BlazeFace ran no faster
quantized (depthwise convolutions) and found false faces; the embedder's descriptors are what search
compares, so both stay FP32.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from engines.zoo import ModelFile

INT8_MODELS = ("person_detector",)
"""The models with an INT8 copy (`--engine onnxruntime-int8` on a CPU)."""
RECIPE = "qdq-pc7-minmax-1"
"""Names the quantization settings and calibration inputs below: a change makes a new copy."""
CALIBRATION_FRAMES = ((1080, 1920), (576, 768))
CALIBRATION_HEIGHTS = (1.0, 0.5, 0.25)
"""Each photo fills this share of a frame's height (at its top left, on grey)."""


def int8_path(model: ModelFile) -> Path:
    import onnxruntime

    sha = model.provenance.onnx_sha256[:12]
    return model.path.parent / "int8" / f"{model.spec.name}-{sha}-{RECIPE}-ort{onnxruntime.__version__}.onnx"


def int8_copy(model: ModelFile) -> Path:
    """The INT8 copy of `model` (made and cached on first use)."""
    if model.spec.name not in INT8_MODELS:
        raise ValueError(f"{model.spec.name} has no INT8 copy (only {', '.join(INT8_MODELS)})")
    out = int8_path(model)
    if out.exists():
        return out
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_inputs(model.path.parent.parent)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        quantize_static(str(model.path), tmp, Inputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=True)
        os.chmod(tmp, 0o644)  # as readable as the models beside it (mkstemp makes it private)
        os.replace(tmp, out)  # whole or not at all: another process may be making the same copy
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def calibration_inputs(cache_dir: Path) -> Iterator[np.ndarray]:
    """The person detector's model inputs (1 x H x W x 3 uint8 canvases, both levels) for the calibration
    frames: every bundled photo at each of CALIBRATION_HEIGHTS on each of CALIBRATION_FRAMES."""
    from engines.detectors import PersonDetector
    from engines.imageops import resize
    from engines.photos import PHOTOS, load_photo
    from engines.runtime.base import Session

    planner = PersonDetector(cast(Session, None))  # levels and canvases only: no model runs here
    for name in PHOTOS:
        photo = load_photo(name, cache_dir)
        for height, width in CALIBRATION_FRAMES:
            for share in CALIBRATION_HEIGHTS:
                h = int(height * share)
                scaled = resize(photo, h, int(photo.shape[1] * h / photo.shape[0]))[:, :width]
                frame = np.full((height, width, 3), 114, np.uint8)
                frame[:h, :scaled.shape[1]] = scaled
                yield from planner.level_batches(np, [frame], planner.plan(height, width), pad_to=1)
