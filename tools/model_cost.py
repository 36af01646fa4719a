"""How much arithmetic the CPU path's models need per 1080p frame, and the least time that can take here.

    python3 tools/model_cost.py [HEIGHT WIDTH]   (default 1080 1920; models from the model cache)

For each pyramid level the detectors plan for a HEIGHT x WIDTH frame at default settings, counts the
multiply-accumulates of every Conv node of the ONNX graph (ONNX shape inference at that level's canvas)
and the values the Conv nodes write; times the detector's own ONNX Runtime session (opened by the
project's loader, as the pipeline runs it) on one canvas per level; and measures what this CPU
reaches on a large FP32 matrix product (NumPy's BLAS), an upper bound on the rate any convolution
reaches here. The floor column is
MACs x 2 / that rate: no FP32 implementation of these models can be faster on this machine.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnx
from onnx import shape_inference

from engines.detectors import BlazeDetector
from engines.loader import load_engines
from engines.runtime.base import cpu_cores
from engines.zoo import ModelName, ModelStore
from schemas.config import DetectionConfig, RuntimeConfig


def conv_cost(model: onnx.ModelProto, shape: tuple[int, int, int, int]) -> tuple[float, float]:
    """(multiply-accumulates, values written) of the graph's Conv nodes for an input of `shape`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    for output in model.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            dim.ClearField("dim_value")
            dim.ClearField("dim_param")
    del model.graph.value_info[:]
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.value_info, *model.graph.output]}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    macs = written = 0.0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        out, kernel = shapes[node.output[0]], weights[node.input[1]]
        macs += float(np.prod(out)) * float(np.prod(kernel[1:]))
        written += float(np.prod(out))
    return macs, written


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """FP32 FLOP/s of the best of `repeats` n x n matrix products."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_ms(detector: BlazeDetector, shape: tuple[int, int, int, int], repeats: int = 3) -> float:
    """Milliseconds of the best of `repeats` runs of the detector's session on a black input, after one
    untimed run."""
    feed = {"image": np.zeros(shape, np.uint8)}
    detector.session.run(feed)
    return min(_timed(lambda: detector.session.run(feed)) for _ in range(repeats)) * 1000


def main(height: int, width: int) -> None:
    engines = load_engines(DetectionConfig(), RuntimeConfig(device="cpu"), warm_up=False, cpu_threads=cpu_cores())
    store = ModelStore()
    rate = gemm_rate()
    print(f"FP32 matrix product on this CPU: {rate / 1e9:.0f} GFLOP/s")
    total_floor = total_ms = 0.0
    detectors: list[tuple[ModelName, BlazeDetector]] = [("face_detector", engines.faces)]
    if engines.persons is not None:
        detectors.append(("person_detector", engines.persons))
    for name, detector in detectors:
        model = onnx.load(str(store.onnx_path(name)))
        for level in detector.plan(height, width):
            shape = (1, level.canvas_h, level.canvas_w, 3)
            macs, written = conv_cost(model, shape)
            ms = run_ms(detector, shape)
            floor = 2 * macs / rate * 1000
            total_floor += floor
            total_ms += ms
            print(f"{name} scale {level.scale:.3f} canvas {level.canvas_h}x{level.canvas_w}: "
                  f"{macs / 1e9:.2f} GMAC, {written / 1e6:.0f} M conv outputs ({written * 4 / 1e6:.0f} MB FP32), "
                  f"floor {floor:.1f} ms, ONNX Runtime {ms:.1f} ms ({floor / ms:.0%} of the rate)")
    print(f"all levels of one {height}x{width} frame: floor {total_floor:.0f} ms, ONNX Runtime {total_ms:.0f} ms")


if __name__ == "__main__":
    size = [int(a) for a in sys.argv[1:3]] if len(sys.argv) >= 3 else [1080, 1920]
    main(*size)
