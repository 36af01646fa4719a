"""The indexer end to end on videos made from real photos, against their ground truth."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from jobchecks import assert_same_tracks  # tests/jobchecks.py
from PIL import Image
from sqlalchemy import func, select

from catalog.db import Catalog
from engines.loader import Engines, detector_batch_for, gpu_detector_batch, load_engines
from engines.photos import load_photo, photo_path
from engines.runtime.base import cpu_cores
from engines.zoo import ModelStore
from indexer.decode.pyav import PyAVDecoder
from indexer.pipeline import PeriodicSchedule, VideoIndexer, VideoTask
from jobs.runner import JobResult, LocalExecutor, run_job
from samples.archive import SampleVideo
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig
from schemas.embeddings import embedding_from_bytes
from schemas.sql import PersonTrack, Track, Video
from schemas.tables import FACES, PERSON_TRACKS, PERSONS, TRACKS

INTERVAL = 0.5  # default sampling: 2 frames per second
TOL = INTERVAL + 0.05


def tracks_of(catalog: Catalog, name: str) -> list[Track]:
    with catalog.session() as s:
        return list(s.scalars(select(Track).join(Video, Video.id == Track.video_id)
                              .where(Video.path.like(f"%/{name}")).order_by(Track.start_s)))


Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def indexed_db(request: pytest.FixtureRequest) -> Indexed:
    """The sample archive indexed into SQLite (`indexed`) and, with VIDX_TEST_POSTGRES_URL, into PostgreSQL."""
    return request.getfixturevalue("indexed" if request.param == "sqlite" else "indexed_postgres")  # type: ignore[no-any-return]


def test_job_summary(indexed_db: Indexed) -> None:
    videos, _, _, result = indexed_db
    s = result.summary
    assert s.done == len(videos) and s.failed == 1 and s.skipped == 0
    assert s.failures[0]["path"].endswith("broken.mp4") and s.failures[0]["error"]


@pytest.fixture(scope="module")
def photo_descriptors(engines: object, cache_dir: Path) -> dict[str, np.ndarray]:
    from engines.verify import largest_face_embedding

    out = {}
    for name in ("obama", "obama3", "biden", "astronaut"):
        _, emb = largest_face_embedding(engines, load_photo(name, cache_dir))  # type: ignore[arg-type]
        assert emb is not None
        out[name] = emb
    return out


def test_every_appearance_found_with_its_times(indexed_db: Indexed,
                                               photo_descriptors: dict[str, np.ndarray]) -> None:
    """Each portrait appearance is one track of that person, start and end within one sampling interval."""
    from schemas.embeddings import embedding_from_bytes

    videos, _, catalog, _ = indexed_db
    for video in videos:
        tracks = tracks_of(catalog, video.name)
        for app in video.appearances:
            if app.faces != 1:
                continue
            ref = photo_descriptors[app.photo]
            mine = [t for t in tracks if np.linalg.norm(embedding_from_bytes(t.embedding) - ref) < 0.6
                    and t.start_s < app.end_s + TOL and t.end_s > app.start_s - TOL]
            assert len(mine) == 1, f"{app.person} in {video.name}: {[(t.start_s, t.end_s) for t in mine]}"
            assert abs(mine[0].start_s - app.start_s) <= TOL, (video.name, app, mine[0].start_s)
            assert abs(mine[0].end_s - app.end_s) <= TOL, (video.name, app, mine[0].end_s)


def test_rotated_and_vfr_videos_are_timed_right(indexed_db: Indexed) -> None:
    videos, _, catalog, _ = indexed_db
    by_name = {v.name: v for v in videos}
    for name in ("rotated_phone.mp4", "vfr_h264.mp4"):
        app = by_name[name].appearances[0]
        tracks = tracks_of(catalog, name)
        assert len(tracks) == 1
        assert abs(tracks[0].start_s - app.start_s) <= TOL and abs(tracks[0].end_s - app.end_s) <= TOL
    with catalog.session() as s:
        rotated = s.scalar(select(Video).where(Video.path.like("%/rotated_phone.mp4")))
        assert rotated is not None and (rotated.width, rotated.height) == (by_name["rotated_phone.mp4"].width,
                                                                          by_name["rotated_phone.mp4"].height)


def test_group_and_empty_scene(indexed_db: Indexed) -> None:
    _, _, catalog, _ = indexed_db
    assert len(tracks_of(catalog, "empty_scene.mp4")) == 0
    group = tracks_of(catalog, "group_t1.mp4")
    assert 5 <= len(group) <= 7  # six people (one near-profile face may split or drop)


def test_same_person_across_videos_matches(indexed_db: Indexed,
                                           cache_dir: Path) -> None:
    """obama2.jpg is in no video; its descriptor finds the obama and obama3 tracks and nothing else."""
    from engines.loader import load_engines
    from schemas.config import DetectionConfig
    from search.query import query_embedding, search_tracks

    videos, _, catalog, _ = indexed_db
    engines = load_engines(DetectionConfig(detect_persons=False), RuntimeConfig(device="cpu"), warm_up=False)
    query, _ = query_embedding(engines, photo_path("obama2", cache_dir))
    hits = search_tracks(catalog, query)
    found = {(Path(h.video).name, round(h.start_s, 1)) for h in hits}
    truth = [(v.name, a) for v in videos for a in v.appearances if a.person == "obama"]
    assert len(hits) == len(truth), found
    for name, app in truth:
        assert any(Path(h.video).name == name and abs(h.start_s - app.start_s) <= TOL for h in hits), (name, found)


def test_parquet_parts_read_back_with_the_declared_schema(
        indexed_db: Indexed) -> None:
    videos, out, catalog, _ = indexed_db
    for table, schema in (("faces", FACES), ("persons", PERSONS), ("tracks", TRACKS),
                          ("person_tracks", PERSON_TRACKS)):
        data = ds.dataset(out / table, format="parquet", schema=schema).to_table()
        assert data.schema.equals(schema)
        assert len(list((out / table).glob("*.parquet"))) == len(videos)  # none for the broken file
        assert not list((out / table).glob(".*"))  # no temporary files left
    tracks = ds.dataset(out / "tracks", format="parquet").to_table()
    with catalog.session() as s:
        n_sql = s.scalar(select(func.count()).select_from(Track))
    assert tracks.num_rows == n_sql
    faces = ds.dataset(out / "faces", format="parquet").to_table()
    assert faces.num_rows > 0 and np.all(np.diff(faces.column("pts_s").to_numpy()[:5]) >= 0)
    thumbs = [out / t for t in tracks.column("thumbnail").to_pylist()]
    assert thumbs and all(p.exists() and p.read_bytes()[:2] == b"\xff\xd8" for p in thumbs)


def test_every_row_names_its_video_and_tracks_by_their_public_ids(indexed_db: Indexed) -> None:
    """One track id everywhere: the faces' track_id is a track of the tracks table, whose rows are the SQL
    index's tracks under the same public ids; thumbnails are named by it; every row carries its video's path."""
    _, out, catalog, _ = indexed_db
    faces, tracks, persons, person_tracks = (ds.dataset(out / t, format="parquet").to_table()
                                             for t in ("faces", "tracks", "persons", "person_tracks"))
    with catalog.session() as s:
        paths = dict(s.execute(select(Video.id, Video.path)).all())
        sql_ids = {t.public_id for t in s.scalars(select(Track))}
        sql_people = {t.public_id for t in s.scalars(select(PersonTrack))}
    for table in (faces, tracks, persons, person_tracks):
        for video_id, path in zip(table.column("video_id").to_pylist(), table.column("video").to_pylist(),
                                  strict=True):
            assert paths[video_id] == path
    assert set(tracks.column("track_id").to_pylist()) == sql_ids
    assert set(faces.column("track_id").drop_null().to_pylist()) == sql_ids
    for track_id, video_id, thumb in zip(*(tracks.column(c).to_pylist() for c in ("track_id", "video_id", "thumbnail")),
                                         strict=True):
        assert track_id.startswith(f"{video_id}-") and Path(thumb).name == f"{track_id}.jpg"
    assert person_tracks.num_rows > 0 and set(person_tracks.column("person_track_id").to_pylist()) == sql_people
    assert set(persons.column("person_track_id").drop_null().to_pylist()) == sql_people
    assert set(tracks.column("person_track_id").drop_null().to_pylist()) <= sql_people
    for thumb, box in zip(*(person_tracks.column(c).to_pylist() for c in ("thumbnail", "best_bbox")), strict=True):
        # the track's best sighting, as cut from its frame and brought to at most 256 pixels high
        with Image.open(out / thumb) as image:
            assert image.format == "JPEG"
            width, height = image.size
        crop_w, crop_h = math.ceil(box[2]) - int(box[0]), math.ceil(box[3]) - int(box[1])  # boxes lie in the frame
        assert (width, height) == ((crop_w, crop_h) if crop_h <= 256 else (round(crop_w * 256 / crop_h), 256))


def test_second_run_does_nothing(indexed_db: Indexed, cache_dir: Path) -> None:
    videos, out, catalog, _ = indexed_db
    with catalog.session() as s:
        before = s.scalar(select(func.count()).select_from(Track))
    again = run_job(Path(videos[0].path).parent, catalog=catalog, out_uri=str(out),
                    settings=IndexSettings(runtime=RuntimeConfig(device="cpu")), executor=LocalExecutor(),
                    cache_dir=cache_dir)
    # The broken file failed before with the same content and run: skipped too (--retry-failed tries it again).
    assert again.summary.skipped == len(videos) + 1 and again.summary.done == again.summary.failed == 0
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Track)) == before


def test_guided_face_search_finds_what_the_full_search_finds(indexed: Indexed, store: ModelStore) -> None:
    """The default guided search (finest level around people and mid-size faces, whole frames every 2 s)
    against the finest level over every frame: the same face tracks, descriptors within 0.1, on the group
    (six small faces, six people) and on the astronaut, whom the person detector does not see."""
    videos, _, catalog, _ = indexed
    assert IndexSettings().detection.face_search == "guided"
    settings = IndexSettings(detection=DetectionConfig(face_search="full"), runtime=RuntimeConfig(device="cpu"))
    full = VideoIndexer(load_engines(settings.detection, settings.runtime, store=store, warm_up=False), settings,
                        PyAVDecoder())
    for name in ("group_t1.mp4", "vfr_h264.mp4"):
        (video,) = [v for v in videos if v.name == name]
        guided = tracks_of(catalog, name)
        tracks = full.index(Path(video.path), video_id=1, run_key="full").tracks
        assert len(guided) == tracks.num_rows > 0, name
        full_embs = np.stack(tracks.column("embedding").to_pylist())
        for t in guided:
            dist = np.linalg.norm(full_embs - embedding_from_bytes(t.embedding), axis=1)
            assert dist.min() < 0.1, (name, t.start_s, float(dist.min()))


def test_every_frame_runs_the_person_detector_every_tenth_of_a_second(indexed: Indexed, engines: Engines) -> None:
    """Every frame of the group clip (six people at a table, 30 fps) analysed with the person detector on
    every frame and, by default, every 0.1 s of video: person rows only on frames 0.1 s or more apart (the
    first frame included), face rows on every frame as before, and the same face and person tracks: same
    spans within a frame or three, descriptors within 0.05, each face track tied to the same person."""
    videos = indexed[0]
    (video,) = [v for v in videos if v.name == "group_t1.mp4"]
    runs = {}
    for every in (0.0, DetectionConfig.persons_every_s):
        settings = IndexSettings(sampling=SamplingConfig(mode="every-frame"),
                                 detection=DetectionConfig(persons_every_s=every), runtime=RuntimeConfig(device="cpu"))
        assert settings.persons_scheduled() == (every > 0)
        runs[every] = VideoIndexer(engines, settings, PyAVDecoder()).index(Path(video.path), video_id=1, run_key="e")
    each, scheduled = runs[0.0], runs[DetectionConfig.persons_every_s]
    frames = sorted(set(each.faces.column("pts_s").to_pylist()) | set(each.persons.column("pts_s").to_pylist()))
    person_times = sorted(set(scheduled.persons.column("pts_s").to_pylist()))
    assert person_times[0] == frames[0] and len(frames) >= 100
    assert min(np.diff(person_times)) >= 0.1 - 1e-6
    assert len(frames) / 3 - 2 <= len(person_times) <= len(frames) / 3 + 2  # one frame in three at 30 fps
    assert scheduled.faces.num_rows == each.faces.num_rows
    assert len(set(scheduled.faces.column("pts_s").to_pylist())) == len(set(each.faces.column("pts_s").to_pylist()))

    def spans(table: pa.Table) -> list[tuple[float, float]]:
        return sorted(zip(table.column("start_s").to_pylist(), table.column("end_s").to_pylist(), strict=True))

    assert each.person_tracks.num_rows == scheduled.person_tracks.num_rows == 6
    for (s0, e0), (s1, e1) in zip(spans(each.person_tracks), spans(scheduled.person_tracks), strict=True):
        assert abs(s0 - s1) <= 0.1 and abs(e0 - e1) <= 0.1
    person_span = {run: dict(zip(r.person_tracks.column("person_track_id").to_pylist(), spans(r.person_tracks),
                                 strict=True)) for run, r in runs.items()}
    assert each.tracks.num_rows == scheduled.tracks.num_rows == 6
    embs = np.stack(scheduled.tracks.column("embedding").to_pylist())
    for start, end, emb, person in zip(*(each.tracks.column(c).to_pylist()
                                         for c in ("start_s", "end_s", "embedding", "person_track_id")), strict=True):
        k = int(np.argmin(np.linalg.norm(embs - np.asarray(emb), axis=1)))
        assert np.linalg.norm(embs[k] - np.asarray(emb)) < 0.05
        assert abs(scheduled.tracks.column("start_s")[k].as_py() - start) <= 0.1
        assert abs(scheduled.tracks.column("end_s")[k].as_py() - end) <= 0.1
        other = scheduled.tracks.column("person_track_id")[k].as_py()
        assert person is not None and other is not None
        assert np.allclose(person_span[0.0][person], person_span[DetectionConfig.persons_every_s][other], atol=0.1)


class _StepsInFlight(VideoIndexer):
    """The GPU's way of running steps (two at once, in a pool of threads; several videos at once) with the
    CPU's engines: only the CUDA stream a step runs on is stood in for."""

    models_on_gpu = True
    videos_in_flight = 3

    def _models_stream(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class _StepQueued(_StepsInFlight):
    """Besides, a third step submitted while two are under way (STEPS_QUEUED_GPU = 1)."""

    steps_queued = 1


class _OneStepAtATime(VideoIndexer):
    steps_in_flight = 1


def test_steps_in_flight_give_the_rows_of_one_step_at_a_time(indexed: Indexed, engines: Engines) -> None:
    """Two steps at once in threads (the CPU's default on two cores or more, and the GPU's way with several videos at
    once, also with a third submitted behind them), frames of two videos sharing steps, and frames that skip the
    person detector (15 fps sampling: every other frame) taking their people from a frame of another step: the
    same rows, bit for bit, and tracks as one video and one step at a time."""
    videos = indexed[0]
    paths = [Path(v.path) for v in videos if v.name in ("group_t1.mp4", "rotated_phone.mp4")]
    settings = IndexSettings(sampling=SamplingConfig(fps=15.0), runtime=RuntimeConfig(device="cpu", frame_batch=8))
    assert settings.persons_scheduled()
    assert VideoIndexer(engines, settings, PyAVDecoder()).steps_in_flight == min(2, cpu_cores())
    runs = []
    for cls in (_OneStepAtATime, VideoIndexer, _StepsInFlight, _StepQueued):
        results = cls(engines, settings, PyAVDecoder()).index_many(
            [VideoTask(p, i + 1, "s") for i, p in enumerate(paths)])
        runs.append({task.path.name: result for task, result in results})
    one = runs[0]
    assert sorted(one) == sorted(p.name for p in paths)
    for threaded in runs[1:]:
        assert sorted(threaded) == sorted(one)
        for name, result in one.items():
            assert not isinstance(result, BaseException) and result.faces.num_rows > 0
            other = threaded[name]
            assert not isinstance(other, BaseException)
            for table in ("faces", "persons", "tracks", "person_tracks"):
                assert getattr(result, table).drop_columns(["thumbnail"] if "tracks" in table else []).equals(
                    getattr(other, table).drop_columns(["thumbnail"] if "tracks" in table else [])), (name, table)


def test_the_person_detection_period_is_in_the_run_key_only_where_frames_are_closer() -> None:
    """At the default 2 fps every sample runs the person detector: the period changes nothing and is not in
    the run key (indexes made before it stay current); every frame and key frames carry it."""
    assert "persons_every_s" not in IndexSettings().result_params()["detection"]
    assert "persons_every_s" not in IndexSettings(sampling=SamplingConfig(fps=10.0)).result_params()["detection"]
    for sampling in (SamplingConfig(mode="every-frame"), SamplingConfig(mode="keyframes"), SamplingConfig(fps=15.0)):
        assert IndexSettings(sampling=sampling).result_params()["detection"]["persons_every_s"] == 0.1
    assert not IndexSettings(sampling=SamplingConfig(mode="every-frame"),
                             detection=DetectionConfig(persons_every_s=0.0)).persons_scheduled()


def test_full_face_searches_come_every_two_seconds_of_video() -> None:
    """A video's first sample searches its whole frame, then the first sample 2 s or more after the last that
    did; a timestamp going back (a damaged stream) starts again."""
    at_2fps = PeriodicSchedule(2.0)
    assert [at_2fps.due(t / 2) for t in range(10)] == [True, False, False, False, True, False, False, False,
                                                       True, False]
    every_frame = PeriodicSchedule(2.0)
    assert sum(every_frame.due(i / 30) for i in range(300)) == 5  # 10 s at 30 fps
    back = PeriodicSchedule(2.0)
    assert [back.due(t) for t in (5.0, 5.5, 1.0, 1.5, 3.0)] == [True, False, True, False, True]


def test_a_gpu_analyses_64_frames_a_step_only_every_frame_and_with_the_memory_for_it() -> None:
    """Every frame on a GPU of 48 GiB or more: 64 frames per detector run and per step; sampled frames, or a
    smaller GPU: 32 (a pure function of the GPU's memory and the sampling; the GPU tests check the engines)."""
    assert detector_batch_for(80.0, "every-frame") == 64
    assert detector_batch_for(47.5, "every-frame") == 32
    assert [detector_batch_for(80.0, mode) for mode in ("fps", "keyframes")] == [32, 32]
    assert detector_batch_for(80.0) == 32
    # Sampled frames need no GPU to say their batch (no CUDA context for a question whose answer is fixed).
    assert gpu_detector_batch("fps") == gpu_detector_batch("keyframes") == 32


def test_only_the_int8_person_detector_gives_results_a_run_key_of_their_own() -> None:
    """Its boxes cut person tracks in crowds at other places, so its results are not taken for FP32 ones (nor,
    the value naming its weights' bits, for an INT8 recipe's before it); the other engines differ by rounding."""
    from schemas.config import EngineChoice, run_key

    def key(engine: EngineChoice) -> str:
        return run_key("1", {}, IndexSettings(runtime=RuntimeConfig(engine=engine)).result_params())

    assert key("auto") == key("onnxruntime") == key("onnxruntime-fp16") == key("tensorrt") != key("onnxruntime-int8")
    assert IndexSettings(runtime=RuntimeConfig(engine="onnxruntime-int8")).result_params()[
        "person_detector_precision"] == "int8, 7-bit weights"


def test_the_int8_person_detector_gives_the_fp32_tracks(indexed: Indexed, indexed_int8: Catalog) -> None:
    """`--engine onnxruntime-int8` (the person detector's INT8 copy) against the default FP32 models on the
    whole sample archive: the same face tracks (descriptors within 0.05) and the same person tracks, at the
    same times within one sampling interval."""
    videos, _, catalog, _ = indexed
    assert_same_tracks(catalog, indexed_int8, [v.name for v in videos], max_l2=0.05, slack_s=INTERVAL + 0.01)
