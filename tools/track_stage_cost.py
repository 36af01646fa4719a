"""What the pipeline's tracking stage (rows, face and person tracks, best chips and person thumbnails: the work of
the thread that records each analysis step) costs on the CPU, on real clips, end to end through VideoIndexer.

    PYTHONPATH=. python tools/track_stage_cost.py SAMPLING CLIP [CLIP ...]     (SAMPLING: fps, every-frame, keyframes)

Run it from another checkout's root (`git worktree add /tmp/base REV`, then PYTHONPATH=/tmp/base python
tools/track_stage_cost.py ...) to compare versions. One JSON line: analysed frames, the tracking stage's seconds
and milliseconds per analysed frame (the stage's own clock, `VideoIndexer.timings['track']`), the person
thumbnails scaled (calls of indexer.pipeline._thumbnail), and a digest of every thumbnail's bytes (the same digest:
the same thumbnails).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import cast

import numpy as np

import indexer.pipeline as pipeline
from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode import open_decoder
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig, SamplingMode


def main() -> None:
    mode, clips = cast(SamplingMode, sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    settings = IndexSettings(runtime=RuntimeConfig(device="cpu"), sampling=SamplingConfig(mode=mode))
    engines = load_engines(DetectionConfig(), settings.runtime, store=ModelStore())
    scaled = [0]
    thumbnail = pipeline._thumbnail

    def counted(crop: np.ndarray) -> np.ndarray:
        scaled[0] += 1
        return thumbnail(crop)

    pipeline._thumbnail = counted
    indexer = pipeline.VideoIndexer(engines, settings, open_decoder("cpu"))
    digest, analysed, thumbnails = hashlib.sha256(), 0, 0
    tasks = [pipeline.VideoTask(p, i + 1, "track-cost") for i, p in enumerate(clips)]
    for task, result in indexer.index_many(tasks, in_flight=1):
        if isinstance(result, BaseException):
            raise SystemExit(f"{task.path}: {result}")
        analysed += result.frames_analysed
        thumbnails += len(result.thumbnails)
        for name in sorted(result.thumbnails):
            digest.update(name.encode() + result.thumbnails[name])
    track_s = indexer.timings["track"]
    print(json.dumps({"sampling": mode, "clips": [p.name for p in clips], "frames_analysed": analysed,
                      "track_s": round(track_s, 3), "track_ms_per_frame": round(track_s / max(analysed, 1) * 1e3, 3),
                      "person_thumbnails_scaled": scaled[0], "thumbnails": thumbnails,
                      "thumbnails_sha256": digest.hexdigest()[:16]}))


if __name__ == "__main__":
    main()
