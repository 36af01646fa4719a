"""What FFmpeg takes blocks of random bytes for, and what vidx's decoder then says of them.

    python3 tools/ffmpeg_noise_probe.py [BLOCKS]   (default 20000)

Writes BLOCKS blocks of pseudo-random bytes (SHAKE-256 of a counter: the same blocks on every run), of
0.1, 2, 4, 5 and 30 kB in turn, each to a file named .mp4; counts the demuxer FFmpeg (PyAV) opens each
with, and the outcome of `PyAVDecoder().probe` (the reason of its VideoError, or "opened"). Behind the
noise-prone formats refused in indexer/decode/pyav.py (NOISE_PRONE_STREAMS, TEXT_FORMATS).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import sys
import tempfile
from pathlib import Path

import av

from indexer.decode.pyav import PyAVDecoder
from indexer.errors import VideoError

SIZES = (100, 2000, 4096, 5000, 30_000)


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    logging.disable(logging.CRITICAL)
    formats: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noise.mp4"
        for i in range(blocks):
            path.write_bytes(hashlib.shake_256(f"noise probe {i}".encode()).digest(SIZES[i % len(SIZES)]))
            try:
                with av.open(str(path), metadata_errors="replace") as container:
                    formats[str(container.format.name)] += 1
            except av.error.FFmpegError:
                formats["(FFmpeg cannot open it)"] += 1
            try:
                PyAVDecoder().probe(path)
                outcomes["opened (would be indexed)"] += 1
            except VideoError as exc:
                outcomes[str(exc).split(": ", 1)[1].split(" (")[0][:100]] += 1
    print(f"{blocks} blocks of noise, sizes {SIZES} bytes in turn; PyAV {av.__version__}, FFmpeg "
          f"{av.library_versions.get('libavformat')}")
    print("demuxer FFmpeg opens them with:")
    for name, n in formats.most_common():
        print(f"  {n:6d}  {name}")
    print("what vidx's decoder says:")
    for reason, n in outcomes.most_common():
        print(f"  {n:6d}  {reason}")


if __name__ == "__main__":
    main()
