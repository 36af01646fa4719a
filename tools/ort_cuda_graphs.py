"""ONNX Runtime's CUDA graphs against plain runs, one model input shape at a time (FP16 NHWC fused sessions).

    python3 tools/ort_cuda_graphs.py

For two of the face detector's 1080p shapes (the finest level's tiles, the largest coarse level), both of the
person detector's and a 32-chip embedder batch: a plain session, then two with `enable_cuda_graph` (on vidx's
own stream, and on ONNX Runtime's), each with fixed input and output buffers (a graph replays at the
addresses it was captured with); three runs to warm up (and capture), then the median of 20 synchronised
runs, and whether the outputs match the plain session's. One JSON line per shape. A session with nodes
outside the CUDA provider cannot capture a graph; that row says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

import cupy as cp
import numpy as np
import onnxruntime as ort

from engines.loader import load_engines
from engines.runtime.onnxruntime import ORT_TO_NUMPY, OnnxRuntimeSession
from engines.zoo import ModelStore
from schemas.config import DetectionConfig, RuntimeConfig


def session(model: OnnxRuntimeSession, graph: bool, own_stream: bool) -> tuple[Any, Any]:
    fast, _ = OnnxRuntimeSession._graphs(str(model.model.path), True, dense=False)
    stream = cp.cuda.Stream(non_blocking=True) if own_stream else cp.cuda.Stream.null
    options = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested",
               "prefer_nhwc": "1", "fuse_conv_bias": "1"}
    if graph:
        options["enable_cuda_graph"] = "1"
    if own_stream:
        options["user_compute_stream"] = str(stream.ptr)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(fast, sess_options=opts,
                                providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"]), stream


def compare(model: OnnxRuntimeSession, shape: tuple[int, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model.model.spec.name, "shape": list(shape)}
    out_shapes: list[tuple[int, ...]] = []
    plain: list[np.ndarray] = []
    for label, graph, own in (("plain", False, True), ("graph", True, True), ("graph_ort_stream", True, False)):
        try:
            started = time.perf_counter()
            s, stream = session(model, graph, own)
            inp = s.get_inputs()[0]
            x = cp.asarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
                           .astype(ORT_TO_NUMPY[inp.type]))
            if not graph:  # the output shapes, from a run that lets ONNX Runtime allocate them
                b = s.io_binding()
                b.bind_input(inp.name, "cuda", 0, x.dtype, list(x.shape), x.data.ptr)
                for o in s.get_outputs():
                    b.bind_output(o.name, "cuda", 0)
                s.run_with_iobinding(b)
                out_shapes = [tuple(v.shape()) for v in b.get_outputs()]
            fixed = [cp.empty(sh, ORT_TO_NUMPY[o.type]) for sh, o in zip(out_shapes, s.get_outputs(), strict=True)]
            b = s.io_binding()
            b.bind_input(inp.name, "cuda", 0, x.dtype, list(x.shape), x.data.ptr)
            for arr, o in zip(fixed, s.get_outputs(), strict=True):
                b.bind_output(o.name, "cuda", 0, arr.dtype, list(arr.shape), arr.data.ptr)
            for _ in range(3):
                s.run_with_iobinding(b)
            stream.synchronize()
            set_up = time.perf_counter() - started
            first = [a.get() for a in fixed]
            times = []
            for _ in range(20):
                t = time.perf_counter()
                s.run_with_iobinding(b)
                stream.synchronize()
                times.append(time.perf_counter() - t)
            cell: dict[str, Any] = {"ms": round(1000 * float(np.median(times)), 3),
                                    "min_ms": round(1000 * min(times), 3), "setup_s": round(set_up, 1),
                                    "same_each_run": all(np.array_equal(f, a.get()) for f, a in
                                                         zip(first, fixed, strict=True))}
            if graph:
                cell["outputs_match_plain"] = all(np.allclose(f, p, atol=1e-2) for f, p in
                                                  zip(first, plain, strict=True))
            else:
                plain = first
            row[label] = cell
        except Exception as exc:  # ONNX Runtime refuses to capture some graphs: say why
            row[label] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return row


def main() -> None:
    engines = load_engines(DetectionConfig(), RuntimeConfig(device="gpu", engine_start="quick"), store=ModelStore(),
                           warm_up=False)
    faces = engines.faces.input_shapes(1080, 1920)
    persons = engines.persons.input_shapes(1080, 1920) if engines.persons is not None else []
    embedder = engines.sessions["face_embedder"]
    assert isinstance(embedder, OnnxRuntimeSession)
    chips = (32, *(int(d) for d in embedder._session.get_inputs()[0].shape[1:]))
    print(json.dumps({"face_detector_shapes": faces, "person_detector_shapes": persons}), flush=True)
    cases: list[tuple[str, tuple[int, ...]]] = [("face_detector", s) for s in (faces[0], faces[2])]
    cases += [("person_detector", s) for s in persons]
    cases.append(("face_embedder", chips))
    for name, shape in cases:
        model = engines.sessions[name]
        assert isinstance(model, OnnxRuntimeSession)
        print(json.dumps(compare(model, tuple(shape))), flush=True)


if __name__ == "__main__":
    main()
