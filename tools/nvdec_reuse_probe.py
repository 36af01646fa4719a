"""Can one PyNvVideoCodec core decoder decode several files in turn, and what does reusing it save?

    python3 tools/nvdec_reuse_probe.py WORK_DIR   (bench clips in WORK_DIR, built by `vidx bench gpu`)

1. Files decoded in turn (A, B, A) by one decoder, each after the previous file's end-of-stream packet,
   against a fresh decoder per file: frame count, PTS and a checksum of every luma plane, every frame
   and key frames only. Then an HEVC file fed to an H.264 decoder (what goes wrong?).
2. `CreateDecoder` alone and from 14 threads at once.
3. 42 files over 14 threads, key frames only and every frame: a fresh decoder per file against one
   decoder per thread, reused.

One JSON line per result (docs/measurements/nvdec_decoder_reuse_h100.jsonl is its output on an H100).
The product's decoder pool (indexer/decode/nvdec.py, DECODERS) rests on part 1.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cupy as cp
import PyNvVideoCodec as nvc

from indexer.decode.nvdec import nv12_planes


def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def luma_sum(frame: Any, height: int, width: int) -> int:
    y_ptr, _, pitch, _ = nv12_planes(frame, height, width)
    memory = cp.cuda.UnownedMemory(y_ptr, pitch * height, frame)
    plane = cp.ndarray((height, pitch), cp.uint8, cp.cuda.MemoryPointer(memory, 0))
    return int(plane[:, :width].sum(dtype=cp.uint64))


def new_decoder(path: Path) -> Any:
    demuxer = nvc.CreateDemuxer(filename=str(path))
    return nvc.CreateDecoder(gpuid=0, codec=demuxer.GetNvCodecId(), cudacontext=0, cudastream=0,
                             usedevicememory=True)


def decode(path: Path, decoder: Any, key_only: bool = False, sums: bool = True) -> list[tuple[int, int]]:
    """(PTS, luma checksum) of each frame; the demuxer's last, empty packet flushes the decoder."""
    out = []
    for packet in nvc.CreateDemuxer(filename=str(path)):
        if key_only and not packet.key and packet.bsl:
            continue
        for frame in decoder.Decode(packet):
            out.append((int(frame.getPTS()),
                        luma_sum(frame, decoder.GetHeight(), decoder.GetWidth()) if sums else 0))
    return out


def same_results(h264: list[Path], hevc: list[Path]) -> None:
    for key_only in (False, True):
        files = [h264[0], h264[1], h264[0]]
        fresh = [decode(p, new_decoder(p), key_only) for p in files]
        decoder = new_decoder(files[0])
        reused = [decode(p, decoder, key_only) for p in files]
        for i, path in enumerate(files):
            emit(probe="reuse", key_only=key_only, file=path.name, order=i, fresh_frames=len(fresh[i]),
                 reused_frames=len(reused[i]), pts_equal=[a for a, _ in fresh[i]] == [a for a, _ in reused[i]],
                 sums_equal=fresh[i] == reused[i],
                 first_diff=next((k for k, (a, b) in enumerate(zip(fresh[i], reused[i], strict=False)) if a != b),
                                 None))
    decoder = new_decoder(h264[0])
    decode(h264[0], decoder, sums=False)
    try:
        emit(probe="codec_switch", frames=len(decode(hevc[0], decoder, sums=False)))
    except Exception as exc:
        emit(probe="codec_switch", error=repr(exc)[:300])


def in_threads(n: int, work: Callable[[], None]) -> float:
    threads = [threading.Thread(target=work) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def create_in_threads(path: Path, n: int) -> tuple[float, list[float]]:
    """Each of n threads makes three decoders; wall time and every creation's time."""
    times: list[float] = []

    def create_three() -> None:
        for _ in range(3):
            t0 = time.perf_counter()
            new_decoder(path)
            times.append(time.perf_counter() - t0)

    return in_threads(n, create_three), sorted(times)


def creation(path: Path) -> None:
    for n in (1, 14):
        wall, times = create_in_threads(path, n)
        emit(probe="create_decoder", threads=n, decoders=len(times), wall_s=round(wall, 3),
             create_median_s=round(times[len(times) // 2], 4), create_max_s=round(times[-1], 4))


def decode_files(files: list[Path], key_only: bool, reuse: bool) -> tuple[float, int]:
    """The files over 14 threads; a fresh decoder per file, or one per thread reused. (wall s, frames)."""
    todo, frames, lock = list(files), [0], threading.Lock()

    def work() -> None:
        decoder = None
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop()
            if decoder is None or not reuse:
                decoder = new_decoder(path)
            n = len(decode(path, decoder, key_only=key_only, sums=False))
            with lock:
                frames[0] += n

    return in_threads(14, work), frames[0]


def throughput(h264: list[Path]) -> None:
    files = [h264[i % len(h264)] for i in range(42)]
    for key_only in (True, False):
        for reuse in (False, True):
            wall, frames = decode_files(files, key_only, reuse)
            emit(probe=("keyframes" if key_only else "all_frames") + "_42_files_14_threads", reuse=reuse,
                 wall_s=round(wall, 3), frames=frames, files_per_s=round(42 / wall, 1), fps=round(frames / wall, 1))


if __name__ == "__main__":
    work_dir = Path(sys.argv[1])
    h264 = sorted(work_dir.glob("bench_h264_*.mp4"))
    hevc = sorted(work_dir.glob("bench_hevc_*.mp4"))
    same_results(h264, hevc)
    creation(h264[0])
    throughput(h264)
