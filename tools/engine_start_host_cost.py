"""The host's share of a GPU worker's start that needs no GPU: importing the worker and getting each model's GPU
graph forms (FP16, narrowing pairs folded, depthwise convolutions dense for the quick sessions), each in a fresh
process, with the forms' cache empty (made now) and then full (read back).

    PYTHONPATH=. python tools/engine_start_host_cost.py [RUNS]     (default 3; uses the model cache, VIDX_CACHE_DIR)

Prints one JSON line per process: seconds to import jobs.worker, seconds to get the forms of the three models a
worker runs (the modules that make them imported, each model loaded and checked against its record), and whether
the `onnx` package was imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from engines.zoo import ModelStore

CHILD = """
import sys, time
t0 = time.perf_counter()
import jobs.worker
imported = time.perf_counter() - t0
t0 = time.perf_counter()
from engines.convert.forms import graph_forms
from engines.runtime.onnxruntime import FOLD_RULE
from engines.zoo import ModelStore
store = ModelStore()
for name in ("face_detector", "person_detector", "face_embedder"):
    model = store.load(name)
    graph_forms(model, str(model.path), fp16=True, dense=True, fold=FOLD_RULE)
print(round(imported, 3), round(time.perf_counter() - t0, 3), "onnx" in sys.modules)
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    forms = ModelStore().models_dir / "forms"
    for _ in range(runs):
        for cache in ("empty", "full"):
            if cache == "empty":
                shutil.rmtree(forms, ignore_errors=True)
            out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout.split()
            print(json.dumps({"forms_cache": cache, "import_worker_s": float(out[0]), "forms_s": float(out[1]),
                              "onnx_imported": out[2] == "True"}), flush=True)


if __name__ == "__main__":
    main()
