"""Would an int8 BlazeFace make the CPU path faster? Static QDQ quantization against FP32, one level.

    python3 tools/cpu_int8_probe.py CLIP.mp4 [MODEL_DIR]   (MODEL_DIR: the model cache's models/ folder)

Calibrates ONNX Runtime's static quantizer (u8 activations, s8 per-channel weights, Conv only) on 8
frames of the clip scaled to the finest 1080p pyramid level (1344x756 on an 800x1376 canvas), then
times both graphs on another frame with 2 intra-op threads and compares the scores.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def canvas(img: np.ndarray) -> np.ndarray:
    out = np.zeros((1, 800, 1376, 3), np.uint8)
    out[0, :img.shape[0], :img.shape[1]] = img
    return out


class Frames(CalibrationDataReader):
    def __init__(self, frames: list[np.ndarray]):
        self.feeds = iter([{"image": canvas(f)} for f in frames])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def main(clip: Path, models: Path) -> None:
    frames = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 40 == 0:
                frames.append(frame.reformat(width=1344, height=756, format="rgb24").to_ndarray())
            if len(frames) >= 10:
                break
    src = models / "face_detector.onnx"
    work = Path(tempfile.mkdtemp())
    quant_pre_process(str(src), str(work / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(str(work / "pre.onnx"), str(work / "int8.onnx"), Frames(frames[:8]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    x = canvas(frames[9])
    scores = {}
    for name, path in (("fp32", src), ("int8", work / "int8.onnx")):
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        scores[name] = session.run(None, {"image": x})[1].ravel()
        for _ in range(2):
            session.run(None, {"image": x})
        t0 = time.perf_counter()
        for _ in range(5):
            session.run(None, {"image": x})
        print(f"{name}: {(time.perf_counter() - t0) / 5 * 1000:.1f} ms per 800x1376 image")
    a, b = scores["fp32"], scores["int8"]
    print(f"scores: max abs difference {float(np.abs(a - b).max()):.3f}; anchors over 0.65: fp32 {(a > 0.65).sum()}, "
          f"int8 {(b > 0.65).sum()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path.home() / ".cache/vidx/models")
