"""What a new input shape of the face detector costs to set up, convolution by convolution: each Conv of the
FP16 face detector as a one-node graph at the input shape it sees when the model runs on N x H x W x 3, on
ONNX Runtime's CUDA provider with vidx's convolution options, timed on its first run and again.

    python3 tools/gpu_conv_setup.py [N,H,W,3]      (default 32,416,704,3: one coarse pyramid level's batch)

One JSON line per convolution (kind: dw3x3 = depthwise 3x3, full1x1, full3x3; each depthwise one again as
dense3x3, an ordinary convolution with diagonal weights: engines.convert.depthwise), then the sums by kind.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

from engines.zoo import ModelStore

CUDA_OPTIONS = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}


def main() -> None:
    shape = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "32,416,704,3").split(",")]
    model = onnx.load(str(ModelStore().load("face_detector").path))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    on_gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    providers: list[Any] = [("CUDAExecutionProvider", CUDA_OPTIONS)] if on_gpu else ["CPUExecutionProvider"]
    totals: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter[str] = collections.Counter()
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in shapes:
            continue
        x_shape = shapes[node.input[0]]
        w = weights[node.input[1]].astype(np.float16)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        kind = ("dw" if group > 1 else "full") + f"{w.shape[2]}x{w.shape[3]}"
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = weights[node.input[2]].astype(np.float16) if len(node.input) > 2 else None
        variants = [(kind, w, attributes)]
        if group > 1:
            dense = np.zeros((w.shape[0], w.shape[0], *w.shape[2:]), np.float16)
            dense[np.arange(w.shape[0]), np.arange(w.shape[0])] = w[:, 0]
            variants.append((f"dense{w.shape[2]}x{w.shape[3]}", dense, {**attributes, "group": 1}))
        for label, kernel, attrs in variants:
            first, again = time_conv(x_shape, kernel, bias, attrs, providers)
            totals[label] += first
            counts[label] += 1
            print(json.dumps({"kind": label, "input": x_shape, "out_channels": int(w.shape[0]),
                              "first_run_s": round(first, 3), "again_s": round(again, 4)}), flush=True)
    print(json.dumps({"input": shape, "provider": providers[0] if isinstance(providers[0], str) else providers[0][0],
                      "first_run_s_by_kind": {k: round(v, 2) for k, v in totals.items()}, "convs": counts}))


def time_conv(x_shape: list[int], w: np.ndarray, bias: np.ndarray | None, attributes: dict[str, Any],
              providers: list[Any]) -> tuple[float, float]:
    """Seconds of a one-Conv graph's first run (set-up included) and of its second."""
    inits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(bias, "B")] if bias is not None else [])
    conv = helper.make_node("Conv", ["X", "W"] + (["B"] if bias is not None else []), ["Y"], **attributes)
    graph = helper.make_graph([conv], "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, None)], inits)
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    one.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(one.SerializeToString(), options, providers=providers)
    x = np.zeros(x_shape, np.float16)
    t1 = time.perf_counter()
    session.run(None, {"X": x})
    t2 = time.perf_counter()
    session.run(None, {"X": x})
    return t2 - t1, time.perf_counter() - t2


if __name__ == "__main__":
    main()
