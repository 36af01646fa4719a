"""Where a GPU worker's start goes: the three models loaded into ONNX Runtime, then (SERIAL=1) each input shape a
1080p video needs set up one after another, then the engines' own warm-up (the shapes side by side, then the whole
path once).

    python3 tools/gpu_startup.py LABEL   (environment: DETECTOR_BATCH=16, SERIAL=1, ENGINE_START=quick; VIDX_CACHE_DIR)

One JSON line: seconds to load the models (open_sessions_s), to set up each shape (SERIAL=1), to warm up, and
in all.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import cast

from engines.arrays import padded_batch
from engines.embedder import CHIP_SIZE
from engines.loader import load_engines
from engines.runtime.base import session_array_module
from engines.zoo import ModelStore
from schemas.config import DetectionConfig, EngineStart, RuntimeConfig


def main() -> None:
    started = time.perf_counter()
    runtime = RuntimeConfig(device="gpu", detector_batch=int(os.environ.get("DETECTOR_BATCH", "0")),
                            engine_start=cast(EngineStart, os.environ.get("ENGINE_START", "wait")))
    engines = load_engines(DetectionConfig(), runtime, store=ModelStore(), warm_up=False)
    assert engines.persons is not None
    out: dict[str, object] = {
        "label": sys.argv[1], "detector_batch": engines.faces.batch_size,
        "open_sessions_s": round(time.perf_counter() - started, 2), "cuda_cache": os.environ.get("CUDA_CACHE_PATH"),
        "face_shapes": engines.faces.input_shapes(1080, 1920),
        "person_shapes": engines.persons.input_shapes(1080, 1920)}
    if os.environ.get("SERIAL") == "1":
        for name, detector in (("faces", engines.faces), ("persons", engines.persons)):
            for shape in detector.input_shapes(1080, 1920):
                t = time.perf_counter()
                detector._first_run(shape)
                out[f"{name}_{'x'.join(map(str, shape))}_s"] = round(time.perf_counter() - t, 2)
        xp = session_array_module(engines.embedder.session)
        size = engines.embedder.batch_size
        for n in sorted({padded_batch(n, size) for n in range(1, size + 1)}):
            t = time.perf_counter()
            engines.embedder.embed_chips(xp.zeros((n, CHIP_SIZE, CHIP_SIZE, 3), xp.uint8))
            out[f"embed_{n}_s"] = round(time.perf_counter() - t, 2)
    out["warm_up_s"] = round(engines.warm_up(), 2)
    out["to_first_frame_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
