"""Where the GPU pipeline's threads spend their time: cProfile of one every-frame run.

    python3 tools/gpu_profile.py WORK_DIR VIDEOS  (bench clips in WORK_DIR, built by `vidx bench gpu`)

On Python 3.12+ cProfile rides on sys.monitoring, which sees every thread of the interpreter: the
profile covers the calling thread, the model threads and the decoder threads together (and a second
profiler cannot be enabled in another thread). On older Pythons it covers the calling thread only.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
from pathlib import Path

from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode.nvdec import NvdecDecoder
from indexer.pipeline import VideoIndexer, VideoTask
from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig

work, n = Path(sys.argv[1]), int(sys.argv[2])
clips = sorted(work.glob("bench_h264_*.mp4"))
settings = IndexSettings(sampling=SamplingConfig(mode="every-frame"),
                         runtime=RuntimeConfig(device="gpu", videos_in_flight=n,  # the default engine (FP16)
                                               engine_start="wait"))
indexer = VideoIndexer(load_engines(settings.detection, settings.runtime, store=ModelStore(),
                                   sampling_mode=settings.sampling.mode), settings, NvdecDecoder())
tasks = [VideoTask(clips[i % len(clips)], i + 1, "p") for i in range(n)]
list(indexer.index_many(tasks[:1]))

before = dict(indexer.timings)
profile = cProfile.Profile()
profile.enable()
results = list(indexer.index_many(tasks))
profile.disable()
buf = io.StringIO()
pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(40)
print(buf.getvalue())
print({k: round(v - before[k], 2) for k, v in indexer.timings.items()})
