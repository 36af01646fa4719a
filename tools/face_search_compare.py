"""Guided against full face search (or one engine against another): the face tracks each finds, and what
each costs, on the same videos.

    PYTHONPATH=. python tools/face_search_compare.py WORK_DIR [--archives test,demo,bench,vtest]
        [--device cpu|gpu] [--every 2.0] [--sampling fps|every-frame] [--modes full,guided]

A mode is a face search, optionally with an engine and with the seconds between person detections
(DetectionConfig.persons_every_s, default 0.1): `guided@onnxruntime` (FP32 everywhere) against `guided`
(`--engine auto`), or `guided/0` (the person detector on every sample) against `guided` (every 0.1 s of
video; with `--sampling every-frame` that is one frame in three at 30 fps). The first mode is the reference.

The archives are the sample presets (built into WORK_DIR once; `bench` is its two H.264 1080p clips) and OpenCV's
vtest.avi (real surveillance footage). Each mode indexes every archive with the engines loaded once for it
(their load is not timed). A reference face track counts as found by another mode when one of its tracks of
the same video overlaps it in time (within one sampling interval) and their descriptors are within L2 0.6
(the same person). One JSON line per archive and mode, then a summary line per archive and mode after the
first.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.loader import load_engines
from engines.photos import load_photo, video_path
from engines.zoo import ModelStore
from indexer.decode.base import open_decoder
from indexer.pipeline import VideoIndexer, VideoTask
from indexer.tracking import box_iou
from samples.archive import build_sample_archive, plan_archive
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig

SAME_PERSON = 0.6


def archive_videos(work: Path, name: str) -> list[Path]:
    if name == "vtest":
        return [video_path("vtest")]
    folder = work / name
    plans = plan_archive(name)  # type: ignore[arg-type]
    if name == "bench":
        plans = tuple(p for p in plans if p.codec == "h264")
    paths = [folder / p.name for p in plans]
    if not all(p.exists() for p in paths):
        photos = {n: load_photo(n) for n in {s.photo for p in plan_archive(name) for s in p.shots}}  # type: ignore[arg-type]
        build_sample_archive(folder, photos, preset=name, processes=os.cpu_count() or 1)  # type: ignore[arg-type]
    return paths


def run(settings: IndexSettings, videos: dict[str, list[Path]]) -> dict[str, Any]:
    engines = load_engines(settings.detection, settings.runtime, store=ModelStore(),
                           sampling_mode=settings.sampling.mode)
    indexer = VideoIndexer(engines, settings, open_decoder(settings.runtime.device))
    out = {}
    for archive, paths in videos.items():
        before = dict(indexer.timings)
        runs_before = dict(getattr(engines.faces, "fine_runs", {}))
        t0 = time.perf_counter()
        tracks, people, faces, persons, person_tracks, analysed, video_s = {}, {}, 0, 0, 0, 0, 0.0
        for task, result in indexer.index_many([VideoTask(p, i + 1, "cmp") for i, p in enumerate(paths)]):
            if isinstance(result, BaseException):
                raise result
            t = result.tracks
            tracks[task.path.name] = [(s, e, np.asarray(v, np.float32)) for s, e, v in zip(
                t.column("start_s").to_pylist(), t.column("end_s").to_pylist(),
                t.column("embedding").to_pylist(), strict=True)]
            sightings: dict[str, list[tuple[float, np.ndarray]]] = {}
            p = result.persons
            for pts, box, track in zip(p.column("pts_s").to_pylist(), p.column("bbox").to_pylist(),
                                       p.column("person_track_id").to_pylist(), strict=True):
                if track is not None:
                    sightings.setdefault(track, []).append((pts, np.asarray(box, np.float32)))
            people[task.path.name] = sightings
            faces += result.faces.num_rows
            persons += result.persons.num_rows
            person_tracks += result.person_tracks.num_rows
            analysed += result.frames_analysed
            video_s += result.info.duration_s or 0.0
        wall = time.perf_counter() - t0
        out[archive] = {"wall_s": round(wall, 2), "video_s": round(video_s, 2),
                        "x_realtime": round(video_s / wall, 2), "frames_analysed": analysed, "faces": faces,
                        "persons": persons, "person_tracks": person_tracks,
                        "face_tracks": sum(len(v) for v in tracks.values()),
                        "stage_s": {k: round(v - before[k], 2) for k, v in indexer.timings.items()},
                        "finest_level_runs": {k: v - runs_before[k] for k, v in
                                              getattr(engines.faces, "fine_runs", {}).items()},
                        "_tracks": tracks, "_people": people}
    return out


def matched(reference: dict[str, list[Any]], other: dict[str, list[Any]],
            slack_s: float) -> tuple[int, list[str], float]:
    """How many reference tracks the other run found, the ones it did not, and the largest descriptor distance
    between a found track and its nearest match."""
    found, lost, worst = 0, [], 0.0
    for video, tracks in reference.items():
        for s, e, v in tracks:
            near = [float(np.linalg.norm(v - v2)) for s2, e2, v2 in other.get(video, [])
                    if s2 <= e + slack_s and e2 >= s - slack_s]
            if near and min(near) < SAME_PERSON:
                found += 1
                worst = max(worst, min(near))
            else:
                lost.append(f"{video} {s:.2f}-{e:.2f} s")
    return found, lost, worst


def people_matched(reference: dict[str, dict[str, list[Any]]], other: dict[str, dict[str, list[Any]]]
                   ) -> tuple[int, int, list[str]]:
    """How many of the reference's person tracks the other run found (at least 80% of a track's sightings
    are, at the same times, boxes of one track of the other run overlapping them by IoU 0.5), of how many,
    and the ones it did not. Only sightings at times the other run found people count: a run whose person
    detector ran on fewer samples is judged on those, and a track seen only between them is not counted."""
    found, total, lost = 0, 0, []
    for video, tracks in reference.items():
        at: dict[float, list[tuple[np.ndarray, str]]] = {}
        for track, seen in other.get(video, {}).items():
            for pts, box in seen:
                at.setdefault(round(pts, 3), []).append((box, track))
        for track, all_seen in tracks.items():
            seen = [(pts, box) for pts, box in all_seen if round(pts, 3) in at]
            if not seen:  # the other run's person detector never ran (or found nobody) while it lasted
                continue
            total += 1
            votes: dict[str, int] = {}
            for pts, box in seen:
                for b, t in at.get(round(pts, 3), []):
                    if box_iou(box, b) >= 0.5:
                        votes[t] = votes.get(t, 0) + 1
                        break
            if votes and max(votes.values()) >= 0.8 * len(seen):
                found += 1
            else:
                lost.append(f"{video} {track} {seen[0][0]:.1f}-{seen[-1][0]:.1f} s")
    return found, total, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--archives", default="test,demo,bench,vtest")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between full searches (guided)")
    parser.add_argument("--sampling", choices=("fps", "every-frame"), default="fps")
    parser.add_argument("--modes", default="full,guided")
    parser.add_argument("--people-json", type=Path, default=None,
                        help="also write each mode's person tracks (sightings: time, box) to this file")
    args = parser.parse_args()
    videos = {a: archive_videos(args.work_dir, a) for a in args.archives.split(",")}
    sampling = SamplingConfig(mode=args.sampling)
    slack = sampling.interval_s or 0.1
    results = {}
    for mode in args.modes.split(","):
        rest, _, persons_every = mode.partition("/")
        search, _, engine = rest.partition("@")
        every = float(persons_every) if persons_every else DetectionConfig.persons_every_s
        settings = IndexSettings(sampling=sampling,
                                 detection=DetectionConfig(face_search=search, full_search_every_s=args.every,
                                                           persons_every_s=every),
                                 runtime=RuntimeConfig(device=args.device, engine=engine or "auto",
                                                       engine_start="wait"))
        results[mode] = run(settings, videos)
        for archive, row in results[mode].items():
            print(json.dumps({"archive": archive, "mode": mode, "every_s": args.every, "device": args.device,
                              "sampling": args.sampling, **{k: v for k, v in row.items() if not k.startswith("_")}}),
                  flush=True)
    if args.people_json:
        args.people_json.write_text(json.dumps({mode: {a: {v: {t: [(p, b.tolist()) for p, b in seen]
                                                                for t, seen in tracks.items()}
                                                           for v, tracks in row["_people"].items()}
                                                       for a, row in rows.items()}
                                                for mode, rows in results.items()}))
    reference, *others = list(results)
    for mode in others:
        for archive in videos:
            ref, got = results[reference][archive], results[mode][archive]
            found, lost, worst = matched(ref["_tracks"], got["_tracks"], slack)
            extra, _, _ = matched(got["_tracks"], ref["_tracks"], slack)
            people_found, people_total, people_lost = people_matched(ref["_people"], got["_people"])
            print(json.dumps({"archive": archive, "summary": True, "reference": reference, "mode": mode,
                              "person_tracks_found": people_found, "reference_person_tracks": people_total,
                              "person_tracks_lost": people_lost,
                              "reference_tracks": ref["face_tracks"], "found": found, "lost": lost,
                              "max_descriptor_l2": round(worst, 3), "tracks_also_in_reference": extra,
                              "tracks": got["face_tracks"], "faces": [ref["faces"], got["faces"]],
                              "persons": [ref["persons"], got["persons"]],
                              "person_tracks": [ref["person_tracks"], got["person_tracks"]],
                              "speedup_wall": round(ref["wall_s"] / got["wall_s"], 2),
                              "detect_faces_s": [ref["stage_s"]["detect_faces"], got["stage_s"]["detect_faces"]],
                              "detect_persons_s": [ref["stage_s"]["detect_persons"],
                                                   got["stage_s"]["detect_persons"]]}),
                  flush=True)


if __name__ == "__main__":
    main()
