"""The same archive indexed through the product by several executors and worker counts, timed, results compared.

    python3 tools/gpu_scaling.py --copies 28 local "local+--workers-per-gpu 1" ray:1x2   (results under $OUT)

A run is `local` (vidx index on GPU 0: its default worker processes, or one worker in its own process with
`+--workers-per-gpu 1`) or `ray:GxK` (vidx job submit on a fresh local Ray
instance that sees G GPUs, with K worker actors per GPU: `--workers-per-gpu K`); `+OPTIONS` after
it adds options to the command (`ray:1x2+--engine onnxruntime-fp16`). Each run is a separate command on a
fresh output folder. Reported per run: the whole command's wall time (Ray start-up and model loading
included), from its start to the first video claimed (workers ready: models set up), the work's wall time
(first claim to last finish, from the SQL index), video-seconds
and decoded frames per second of work, whether its tracks and its search hits (`vidx search` with
a photo that is in no video) equal the first run's, the worker processes the job replaced (a crash, a hang:
then the end of the command's stderr too, where a dead worker's fatal-error report is) and the command's last
warnings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_archive(dest: Path, copies: int) -> list[Path]:
    from bench.video import bench_clips

    clips = [c.path for c in bench_clips(Path("/tmp/vidx-bench"), None, print) if c.codec == "h264"]
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(copies):
        for clip in clips:
            path = dest / f"{clip.stem}_{i:03d}.mp4"
            if not path.exists():
                shutil.copyfile(clip, path)
                with path.open("ab") as f:  # a distinct fingerprint per copy
                    f.write(f"copy{i}".encode())
            made.append(path)
    return made


def tracks(db: Path) -> list[tuple[str, float, float, int]]:
    con = sqlite3.connect(db)
    rows = con.execute("select v.path, t.start_s, t.end_s, t.n_faces from tracks t join videos v on v.id = t.video_id")
    return sorted((Path(p).name, round(s, 3), round(e, 3), n) for p, s, e, n in rows)


def _utc(stamp: str) -> datetime:
    when = datetime.fromisoformat(stamp)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # SQLite keeps UTC, naive


def work_window(db: Path) -> tuple[float, float, int, datetime]:
    """(work seconds from first claim to last finish, decoded frames, video seconds, first claim) of the job."""
    con = sqlite3.connect(db)
    first, last = con.execute("select min(claimed_at), max(finished_at) from tasks").fetchone()
    frames, seconds = con.execute("select sum(frames), sum(duration_s) from tasks where status = 'done'").fetchone()
    span = (_utc(last) - _utc(first)).total_seconds()
    return span, frames or 0, seconds or 0, _utc(first)


def worker_spans(db: Path, first_claim: datetime) -> dict[str, dict[str, float]]:
    """Per worker: its first claim and last finish in seconds after the job's first claim, its videos and the video
    seconds it indexed per second of its own span (does one worker start or end long after the other?)."""
    con = sqlite3.connect(db)
    rows = con.execute("select worker, min(claimed_at), max(finished_at), count(*), sum(duration_s) from tasks "
                       "where status = 'done' group by worker").fetchall()
    spans = {}
    for worker, first, last, videos, seconds in rows:
        start, end = ((_utc(t) - first_claim).total_seconds() for t in (first, last))
        spans[str(worker)] = {"first_claim_s": round(start, 2), "last_finish_s": round(end, 2), "videos": videos,
                              "video_s_per_s": round((seconds or 0) / max(end - start, 1e-6), 2)}
    return spans


def search_hits(out: Path, photo: Path) -> list[tuple[str, float, float, float]]:
    """Every appearance of the photo's person (a photo that is in no video), as `vidx search --json` says."""
    proc = subprocess.run([sys.executable, "-m", "vidx", "search", "--photo", str(photo), "--out", str(out),
                           "--top", "1000", "--device", "cpu", "--json"],
                          capture_output=True, text=True, timeout=120, check=True)
    rows = json.loads(proc.stdout)
    rows = rows.get("results", rows) if isinstance(rows, dict) else rows
    return sorted((Path(r["video"]).name, round(r["start_s"], 3), round(r["end_s"], 3), round(r["score"], 3))
                  for r in rows)


def kept_stderr(stderr: str) -> str:
    """What to keep of a command's stderr where a process died: its fatal-error report (from a little before its
    first line: a library's message) or, without one, the end."""
    from jobs.processes import FATAL_REPORT

    at = stderr.find(FATAL_REPORT.decode())
    return stderr[max(0, at - 2000):at + 30000] if at >= 0 else stderr[-8000:]


def run(kind: str, archive: Path, work: Path, timeout: int, device: str = "gpu",
        photo: Path | None = None) -> dict[str, object]:
    label = kind
    out = work / "".join(c if c.isalnum() else "_" for c in label)
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    kind, _, options = kind.partition("+")
    extra = options.split() if options else []
    if kind == "local":
        cmd = ["vidx", "index", str(archive), "--device", device]
        env["CUDA_VISIBLE_DEVICES"] = "0"
    else:
        gpus, per_gpu = (int(x) for x in kind.split(":")[1].split("x"))
        cmd = ["vidx", "job", "submit", str(archive), "--executor", "ray", "--device", device,
               "--workers-per-gpu", str(per_gpu)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(gpus))
    cmd = [sys.executable, "-m", *cmd, "--out", str(out), "--json", *extra]
    t0, started = time.monotonic(), datetime.now(UTC)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    record: dict[str, object] = {"run": label, "rc": proc.returncode, "command_s": round(wall, 2),
                                 "ended": time.strftime("%H:%M:%S")}
    if proc.returncode != 0:
        record["stderr"] = proc.stderr[-2000:]
        return record
    summary = json.loads(proc.stdout)
    span, frames, seconds, first_claim = work_window(out / "index.sqlite")
    record.update(done=summary.get("done"), failed=summary.get("failed"), workers=summary.get("workers"),
                  workers_replaced=summary.get("workers_replaced"), driver_seconds=summary.get("seconds"),
                  warnings=[line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line][-20:],
                  start_to_first_claim_s=round((first_claim - started).total_seconds(), 2), work_s=round(span, 2),
                  frames_per_s=round(frames / span, 1), video_s_per_s=round(seconds / span, 2),
                  per_worker=worker_spans(out / "index.sqlite", first_claim), tracks=tracks(out / "index.sqlite"))
    if summary.get("workers_replaced"):  # a worker died or hung: keep its fatal-error report, or the stderr's end
        record["stderr"] = kept_stderr(proc.stderr)
    if photo is not None:
        record["hits"] = search_hits(out, photo)
    return record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--copies", type=int, default=28)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--search-photo", default="obama3", help="a bundled photo to search every run's index for")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    archive = Path("/tmp/scaling-archive")
    videos = build_archive(archive, args.copies)
    print(f"{len(videos)} videos in {archive}", flush=True)
    results: list[dict[str, object]] = []
    from engines.photos import photo_path

    photo = photo_path(args.search_photo)
    for kind in args.runs:
        rec = run(kind, archive, Path("/tmp/scaling-out"), args.timeout, photo=photo)
        for key in ("tracks", "hits"):
            if results and key in rec and key in results[0]:
                rec[f"same_{key}_as_first"] = rec[key] == results[0][key]
        results.append(rec)
        shown = {k: v for k, v in rec.items() if k not in ("tracks", "hits")}
        print(json.dumps({**shown, "n_tracks": len(rec.get("tracks", [])),  # type: ignore[arg-type]
                          "n_hits": len(rec.get("hits", []))}), flush=True)  # type: ignore[arg-type]
    (out / "scaling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
