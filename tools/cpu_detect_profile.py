"""Where the CPU detectors spend their time on 1080p frames: per-frame cost and a cProfile of faces.detect.

    python3 tools/cpu_detect_profile.py CLIP.mp4   (a 1080p clip, e.g. the bench preset's bench_h264_0.mp4)

Takes 16 frames (every 15th), loads the engines on the CPU at default settings, runs each detector once
untimed, then times `faces.detect` and `persons.detect` on the 16 frames and profiles `faces.detect`.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import av

from engines.loader import load_engines
from schemas.config import DetectionConfig, RuntimeConfig


def main(clip: Path) -> None:
    frames = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 15 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= 16:
                break
    engines = load_engines(DetectionConfig(), RuntimeConfig(device="cpu"))
    assert engines.persons is not None
    for name, detector in (("faces", engines.faces), ("persons", engines.persons)):
        detector.detect(frames[:4])
        t0 = time.perf_counter()
        detector.detect(frames)
        print(f"{name}.detect: {(time.perf_counter() - t0) * 1000 / len(frames):.1f} ms per frame")
    print("levels:", [(lv.scale, lv.canvas_h, lv.canvas_w) for lv in engines.faces.plan(*frames[0].shape[:2])])
    profile = cProfile.Profile()
    profile.enable()
    engines.faces.detect(frames)
    profile.disable()
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(8)
    print(buf.getvalue())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
