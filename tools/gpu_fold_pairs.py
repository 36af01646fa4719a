"""Each of the face detector's depthwise-separable pairs timed alone, as the model has it (depthwise Conv, then the
1 x 1 Conv) and folded into one Conv (engines/convert/separable.py), at the input it sees in each shape of a 1080p
frame's pyramid: the data for choosing which pairs a GPU folds (engines.runtime.onnxruntime.FOLD_RULE).

    python3 tools/gpu_fold_pairs.py [BATCH]      (default 64; needs onnxruntime-gpu and CuPy for the GPU)

On CUDA each form is an FP16 one- or two-Conv graph in a session of its own with vidx's fastest options (NHWC,
bias fused, HEURISTIC); its input and output stay on the GPU (IO binding). Both forms pay the same layout
transposes at the graph's edges. Times: the first run (cuDNN's set-up included) and the median of 20 runs after
3, each synchronised. Without CUDA the same runs on the CPU in FP32 (to check the tool; the CPU keeps the pairs).
One JSON line per pair and shape, then per shape the sums for no pair folded, all folded, vidx's rule, and folding
each pair only where it ran faster folded.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.convert.fixed_shapes import with_input_shapes  # noqa: E402
from engines.convert.separable import fold_separable, pair_nodes  # noqa: E402
from engines.detectors import FaceDetector  # noqa: E402
from engines.runtime.onnxruntime import FOLD_RULE, OnnxRuntimeSession  # noqa: E402
from engines.zoo import ModelStore  # noqa: E402

RUNS = 20
CUDA_OPTIONS = {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1", "fuse_conv_bias": "1",
                "arena_extend_strategy": "kSameAsRequested"}


def tensor_shapes(model: onnx.ModelProto, shape: tuple[int, ...]) -> dict[str, list[int]]:
    """Every tensor's shape when the model runs on an input of `shape` (N x H x W x 3)."""
    inferred = shape_inference.infer_shapes(with_input_shapes(model, {model.graph.input[0].name: shape}))
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input)}


def pair_graph(model: onnx.ModelProto, dw: int, pw: int, x_shape: list[int], half: bool) -> onnx.ModelProto:
    """The pair's two Convs (node indices dw, pw) as a graph of their own on an input of x_shape, weights from the
    model; with `half`, in FP16."""
    nodes = [model.graph.node[dw], model.graph.node[pw]]
    names = {i for n in nodes for i in n.input[1:] if i}
    inits = [i for i in model.graph.initializer if i.name in names]
    x, y = nodes[0].input[0], nodes[1].output[0]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info(x, TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inits)
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    one.ir_version = 8
    return as_half(one, TensorProto.FLOAT16) if half else one


def as_half(model: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """Weights, input and output in FP16 (no casts: the runs time the convolutions alone)."""
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = dtype
    return model


def time_graph(model: onnx.ModelProto, x_shape: list[int], on_gpu: bool) -> tuple[float, float]:
    """First run (s) and the median of RUNS later runs (ms) of a one-input graph."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers: list[Any] = [("CUDAExecutionProvider", CUDA_OPTIONS)] if on_gpu else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    run: Callable[[], object]
    if on_gpu:
        import cupy as cp

        x = cp.zeros(x_shape, cp.float16)
        binding = session.io_binding()
        binding.bind_input(name, "cuda", 0, np.float16, x_shape, x.data.ptr)
        binding.bind_output(out, "cuda", 0)

        def run() -> object:
            session.run_with_iobinding(binding)
            cp.cuda.Device().synchronize()
            return None
    else:
        host = np.zeros(x_shape, np.float32)

        def run() -> object:
            return session.run(None, {name: host})
    started = time.perf_counter()
    run()
    first = time.perf_counter() - started
    times = []
    for _ in range(RUNS + 3):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return first, statistics.median(times[3:]) * 1000


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    on_gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    store = ModelStore()
    model = onnx.load(str(store.load("face_detector").path))
    detector = FaceDetector(OnnxRuntimeSession(store.load("face_detector")), batch_size=batch, fine_tiles=True)
    shapes = list(dict.fromkeys(detector.input_shapes(1080, 1920)))
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for shape in shapes:
        sizes = tensor_shapes(model, shape)
        rows: list[dict[str, Any]] = []
        for k, (dw, pw) in enumerate(pair_nodes(model)):
            x_shape = sizes[model.graph.node[dw].input[0]]
            channels = (weights[model.graph.node[dw].input[1]][0], weights[model.graph.node[pw].input[1]][0])
            separate = pair_graph(model, dw, pw, x_shape, on_gpu)
            folded = fold_separable(pair_graph(model, dw, pw, x_shape, False))  # folded in FP32, then halved
            if on_gpu:
                folded = as_half(folded, TensorProto.FLOAT16)
            (pair_first, pair_ms), (fold_first, fold_ms) = (time_graph(g, x_shape, on_gpu) for g in (separate, folded))
            row: dict[str, Any] = {"shape": list(shape), "pair": k, "channels": list(channels), "input": x_shape,
                   "pair_first_s": round(pair_first, 3), "pair_ms": round(pair_ms, 4),
                   "folded_first_s": round(fold_first, 3), "folded_ms": round(fold_ms, 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        sums: dict[str, dict[str, float]] = {}
        rules: dict[str, Callable[[dict[str, Any]], bool]] = {
            "none": lambda r: False, "all": lambda r: True, "vidx": lambda r: FOLD_RULE(*r["channels"]),
            "faster_folded": lambda r: r["folded_ms"] <= r["pair_ms"]}
        for rule, fold in rules.items():
            chosen = [(r, fold(r)) for r in rows]
            sums[rule] = {"folded": sum(c for _, c in chosen),
                          "first_s": round(sum(r["folded_first_s"] if c else r["pair_first_s"] for r, c in chosen), 2),
                          "ms": round(sum(r["folded_ms"] if c else r["pair_ms"] for r, c in chosen), 3)}
        faster = [r["channels"] for r in rows if r["folded_ms"] <= r["pair_ms"]]
        print(json.dumps({"shape": list(shape), "summary": True, "provider": "CUDA FP16" if on_gpu else "CPU FP32",
                          "sums": sums, "faster_folded_channels": faster}), flush=True)


if __name__ == "__main__":
    main()
