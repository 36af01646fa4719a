"""ONNX Runtime CUDA provider options against the face detector: set-up per new input shape, steady run time.

    python3 tools/ort_cuda_options.py            (needs onnxruntime-gpu, CuPy and a GPU; JSON lines on stdout)

Each variant runs in a fresh process (CUDA and cuDNN state would otherwise carry over): one session,
inputs and outputs on the GPU (IO binding), zero images in batches of 32 at the finest and the second
1080p pyramid levels' canvases (800x1376, 416x704), then the first shape again. A run's time includes
the device synchronisation after it. The first run of a shape pays the provider's set-up; the third
and fourth show the steady time. Output on an H100: docs/measurements/ort_cuda_options_h100.txt (part 3).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [(32, 800, 1376, 3)] * 4 + [(32, 416, 704, 3)] * 3 + [(32, 800, 1376, 3)]
VARIANTS: dict[str, tuple[bool, dict[str, str]]] = {
    "fp32 (vidx: HEURISTIC)": (False, {}),
    "fp32 fuse_conv_bias": (False, {"fuse_conv_bias": "1"}),
    "fp32 algo search DEFAULT": (False, {"cudnn_conv_algo_search": "DEFAULT"}),
    "fp16 (vidx: HEURISTIC)": (True, {}),
    "fp16 fuse_conv_bias": (True, {"fuse_conv_bias": "1"}),
    "fp16 prefer_nhwc": (True, {"prefer_nhwc": "1"}),
    "fp16 fuse_conv_bias prefer_nhwc": (True, {"fuse_conv_bias": "1", "prefer_nhwc": "1"}),
    "fp16 algo search DEFAULT": (True, {"cudnn_conv_algo_search": "DEFAULT"}),
}


def measure(name: str) -> dict[str, object]:
    import cupy as cp
    import numpy as np
    import onnx
    import onnxruntime as ort

    from engines.convert.fp16 import to_float16
    from engines.zoo import ModelStore

    fp16, options = VARIANTS[name]
    path = ModelStore().load("face_detector").path
    graph: str | bytes = to_float16(onnx.load(str(path))).SerializeToString() if fp16 else str(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    provider = {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", **options}
    session = ort.InferenceSession(graph, sess_options=opts, providers=[("CUDAExecutionProvider", provider)])
    runs: list[list[object]] = []
    for shape in SHAPES:
        x = cp.zeros(shape, cp.uint8)
        binding = session.io_binding()
        binding.bind_input("image", "cuda", 0, np.uint8, list(shape), x.data.ptr)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", 0)
        cp.cuda.Device().synchronize()
        started = time.perf_counter()
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # ORT's own error types: the variant fails, the others go on
            return {"variant": name, "runs": runs, "error": str(exc)[:300]}
        cp.cuda.Device().synchronize()
        runs.append([f"{shape[1]}x{shape[2]}", round(time.perf_counter() - started, 4)])
    return {"variant": name, "runs": runs}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2])), flush=True)
        return
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                              timeout=300)
        lines = proc.stdout.strip().splitlines()
        print(lines[-1] if lines else json.dumps({"variant": name, "error": proc.stderr[-600:]}), flush=True)


if __name__ == "__main__":
    main()
