"""The person detector's input size and score threshold on real footage: OpenCV's vtest.avi at 2 fps.

    PYTHONPATH=. python tools/person_detector_sizes.py

For each level set (the long side of the fine level, and of the coarse level; equal sides mean one level),
prints people per analysed frame at several score thresholds, people found in t1.jpg (six at a table), and
the person detector's time per frame on this machine's CPU (ONNX Runtime, the default 4 frames per run;
the best of three passes over the first 40 frames, wall clock, and process CPU time across all cores).
"""

from __future__ import annotations

import time

import av
import numpy as np

from engines.detectors import PersonDetector
from engines.photos import load_photo, video_path
from engines.runtime.base import cpu_cores, open_session
from engines.zoo import ModelStore

LEVELS = ((416, 416), (512, 512), (640, 640), (768, 768), (896, 896), (640, 416), (768, 416))
THRESHOLDS = (0.3, 0.4, 0.5)


def main() -> None:
    frames = []
    with av.open(str(video_path("vtest"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 5 == 0:  # 2 fps of the 10 fps video
                frames.append(frame.to_ndarray(format="rgb24"))
    t1 = load_photo("t1")
    session = open_session(ModelStore().load("person_detector"), device="cpu", threads=cpu_cores())
    print(f"{len(frames)} frames of vtest.avi; {session.description}")
    print("| long side (fine / coarse) | ms/frame wall | CPU ms/frame | " +
          " | ".join(f"people/frame at {t}" for t in THRESHOLDS) + " | t1.jpg at 0.4 |")
    print("|---" * (4 + len(THRESHOLDS)) + "|")
    for fine, coarse in LEVELS:
        detector = PersonDetector(session, score_threshold=min(THRESHOLDS), long_side=fine, coarse_side=coarse)
        detector.detect(frames[:4])
        wall = cpu = float("inf")
        for _ in range(3):
            w, c = time.perf_counter(), time.process_time()
            detector.detect(frames[:40])
            wall = min(wall, (time.perf_counter() - w) / 40 * 1000)
            cpu = min(cpu, (time.process_time() - c) / 40 * 1000)
        found = detector.detect(frames)
        counts = [np.mean([(d.scores >= t).sum() for d in found]) for t in THRESHOLDS]
        in_t1 = int((detector.detect([t1])[0].scores >= 0.4).sum())
        levels = f"{fine}" if fine == coarse else f"{fine} / {coarse}"
        print(f"| {levels} | {wall:.0f} | {cpu:.0f} | " + " | ".join(f"{c:.2f}" for c in counts) + f" | {in_t1} of 6 |")


if __name__ == "__main__":
    main()
