"""The GPU pipeline's three sampling rows (default, every frame, key frames) on the bench clips, in one process,
with the engines' load-and-warm-up time: for A/B runs of engine settings, one fresh process per variant.

    python3 tools/gpu_pipeline_rows.py WORK_DIR LABEL [CODEC] [COPIES] [decode-all]   (clips built by `vidx bench gpu`)

`decode-all`: NVDEC also decodes the non-reference frames no sample needs (the decoders skip them by default).

One JSON line. The rows are `vidx bench gpu`'s (the same function, `vidx.bench_video.gpu_pipeline_rows`)
without its decode-only and CPU rows.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engines.loader import load_engines
from engines.zoo import ModelStore
from schemas.config import IndexSettings, RuntimeConfig
from vidx.bench_video import gpu_pipeline_rows, rss_mib

work, label = Path(sys.argv[1]), sys.argv[2]
codec = sys.argv[3] if len(sys.argv) > 3 else "h264"
copies = int(sys.argv[4]) if len(sys.argv) > 4 else 14
decode_all = len(sys.argv) > 5 and sys.argv[5] == "decode-all"  # NVDEC decodes unsampled non-reference frames too
files = sorted(work.glob(f"bench_{codec}_*.mp4"))
paths = [files[i % len(files)] for i in range(copies)]
runtime = RuntimeConfig(device="gpu")
t0 = time.perf_counter()
engines = load_engines(IndexSettings().detection, runtime, store=ModelStore())
out: dict[str, object] = {"label": label, "codec": codec, "videos": copies,
                          "load_and_warm_up_s": round(time.perf_counter() - t0, 1),
                          "engines": engines.describe()}
out["decode_all"] = decode_all
for mode, row in gpu_pipeline_rows(engines, runtime, paths, copies, lambda line: print(line, file=sys.stderr),
                                   skip_unsampled=not decode_all).items():
    out[mode] = {k: row[k] for k in ("wall_s", "frames_in_video", "frames_decoded", "frames_analysed", "faces",
                                     "video_fps", "decoded_fps", "video_s_per_s", "failed", "stage_s")}
    print(json.dumps({"label": label, "mode": mode, **out[mode]}), file=sys.stderr, flush=True)
out["rss_mib"] = round(rss_mib(), 1)
print(json.dumps(out), flush=True)
