"""PyAV decode time of one file with FFmpeg's skip_frame setting: every frame, reference frames only,
key frames only. One JSON line per setting (DEFAULT is run first and last, to show the noise).

    python3 tools/decode_skip.py FILE.mp4

Behind the "decoding fewer frames" paragraph of docs/benchmarks.md (the CPU path, issue 3).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import av


def decode(path: str, skip: str) -> dict[str, object]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = skip
        started = time.perf_counter()
        types = Counter(str(frame.pict_type) for frame in container.decode(stream))
        seconds = time.perf_counter() - started
        duration = float(stream.duration * stream.time_base) if stream.duration else None
    return {"skip_frame": skip, "frames": sum(types.values()), "picture_types": dict(types),
            "seconds": round(seconds, 3), "x_real_time": round(duration / seconds, 1) if duration else None}


def main() -> None:
    for skip in ("DEFAULT", "NONREF", "NONKEY", "DEFAULT"):
        print(json.dumps(decode(sys.argv[1], skip)), flush=True)


if __name__ == "__main__":
    main()
