"""The GPU path against the CPU path: kernels, engines, NVDEC and the whole pipeline.

Marked `gpu`: skipped without a GPU, a failure on a GPU run (VIDX_REQUIRE_GPU=1). The CPU path is
the reference, itself checked against ground truth and the reference numbers in other tests.
"""

from __future__ import annotations

import gc
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from jobchecks import assert_same_tracks  # tests/jobchecks.py

from catalog.db import Catalog, default_db_url
from engines.loader import Engines, load_engines
from engines.verify import largest_face_embedding
from engines.zoo import ModelStore
from jobs.runner import JobResult, LocalExecutor, run_job
from samples.archive import SampleVideo
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig, SamplingConfig

pytestmark = pytest.mark.gpu
INTERVAL = 0.5


@pytest.fixture(scope="module")
def cp() -> object:
    import cupy

    return cupy


@pytest.fixture(scope="module")
def gpu_engines(store: ModelStore) -> Engines:
    engines = load_engines(DetectionConfig(), RuntimeConfig(device="gpu", engine="onnxruntime", engine_start="wait"),
                           store=store, warm_up=False)
    assert "CUDA" in engines.faces.session.description, engines.faces.session.description
    return engines


def match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each box of a, the distance (px, largest corner difference) to the nearest box of b."""
    return np.array([np.abs(b - box).max(axis=1).min() for box in a]) if len(a) and len(b) else np.zeros(0)


def test_nv12_kernel_matches_the_reference_formula(cp: object) -> None:
    from engines import cuda_ops

    rng = np.random.default_rng(0)
    h, w = 36, 64
    y = rng.integers(16, 236, (h, w), dtype=np.uint8)
    uv = rng.integers(16, 241, (h // 2, w // 2, 2), dtype=np.uint8)
    yd, uvd = cp.asarray(y), cp.asarray(uv)  # type: ignore[attr-defined]
    yy = (y.astype(np.float64) - 16) * 255 / 219
    u = np.repeat(np.repeat(uv[..., 0].astype(np.float64) - 128, 2, 0), 2, 1) * 255 / 224
    v = np.repeat(np.repeat(uv[..., 1].astype(np.float64) - 128, 2, 0), 2, 1) * 255 / 224
    ref = np.clip(np.stack([yy + 1.402 * v, yy - 0.3441 * u - 0.7141 * v, yy + 1.772 * u], -1) + 0.5, 0, 255)
    ref = np.floor(ref).astype(np.int16)
    for rot in (0, 90, 180, 270):
        out = cuda_ops.nv12_to_rgb(yd.data.ptr, uvd.data.ptr, w, w, h, w, rotation=rot, bt709=False).get()
        expect = np.rot90(ref, k=-(rot // 90))
        assert out.shape == expect.shape
        assert np.abs(out.astype(np.int16) - expect).max() <= 1, rot


def test_decode_kernel_matches_the_array_decode(cp: object) -> None:
    """The detector's one-launch candidate decoding gives the rows the array-by-array decode gives."""
    import cupy

    from engines import cuda_ops
    from engines.detectors import FACE_ANCHORS

    rng = np.random.default_rng(0)
    b, k = 3, 6
    anchors = FACE_ANCHORS.centres(192, 320)
    reg = rng.normal(0, 20, (b, len(anchors), 4 + 2 * k)).astype(np.float32)
    scores = rng.random((b, len(anchors))).astype(np.float32)
    def decoded(cap: int = 4096) -> np.ndarray | None:
        return cuda_ops.candidate_rows(cuda_ops.queue_candidates(cupy.asarray(reg), cupy.asarray(scores),
                                                                 cupy.asarray(anchors), threshold=0.9, n_keypoints=k,
                                                                 cap=cap))

    rows = decoded()
    tile, anchor = np.nonzero(scores >= 0.9)
    r, a = reg[tile, anchor], anchors[anchor]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    boxes = np.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2, cy + r[:, 3] / 2], 1)
    kps = r[:, 4:] + np.tile(a, (1, k))
    assert rows is not None and len(rows) == len(tile) > 500
    np.testing.assert_allclose(rows[:, :4], boxes, atol=2e-3)
    np.testing.assert_array_equal(rows[:, 4], scores[tile, anchor])
    np.testing.assert_allclose(rows[:, 5:5 + 2 * k], kps, atol=2e-3)
    np.testing.assert_array_equal(rows[:, -1].astype(np.int64), tile * len(anchors) + anchor)
    assert decoded(cap=100) is None  # too many: the caller falls back
    # boxes decoded already (the person detector's): the rows carry them as they are
    corners = cuda_ops.candidate_rows(cuda_ops.queue_candidates(cupy.asarray(reg[:, :, :4]), cupy.asarray(scores),
                                                                None, threshold=0.9, n_keypoints=0))
    assert corners is not None and corners.shape == (len(tile), 6)
    np.testing.assert_array_equal(corners[:, :4], reg[tile, anchor, :4])
    np.testing.assert_array_equal(corners[:, 4], scores[tile, anchor])
    np.testing.assert_array_equal(corners[:, 5].astype(np.int64), tile * len(anchors) + anchor)


def test_gpu_levels_match_the_host_pyramid(cp: object, engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """The level kernel gives the model inputs the CPU path builds with Pillow."""
    det = engines.faces
    frames = [photos["t1"], photos["t1"][::-1].copy()]
    levels = det.plan(*frames[0].shape[:2])
    host = list(det.level_batches(np, frames, levels))
    dev = [b.get() for b in det.level_batches(cp, [cp.asarray(f) for f in frames], levels)]  # type: ignore[attr-defined]
    for level, want, got in zip(levels, host, dev, strict=True):
        assert got.shape == (det.batch_size, *want.shape[1:])
        assert not got[2:].any()  # padding images are black
        assert np.abs(got[:2].astype(np.int16) - want).mean() < 2.0, level
        assert not got[:, level.height:].any() and not got[:, :, level.width:].any()  # the black margin


def test_tiled_level_kernel_gives_the_per_pixel_kernels_pixels(cp: object, photos: dict[str, np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """place_level's separable windows give what its 2-D per-pixel form gives (float rounding apart), for
    frames of different sizes in one launch, shrinking and enlarging, onto canvases larger and smaller than the
    level, and leave the rest of each canvas as it was; only a level that shrinks its frames too much for the
    windows' shared memory takes the per-pixel form."""
    from engines import cuda_ops

    per_pixel_launches: list[int] = []
    per_pixel = cuda_ops._place_per_pixel

    def counted(*args: object) -> None:
        per_pixel_launches.append(1)
        per_pixel(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cuda_ops, "_place_per_pixel", counted)
    frames = [cp.asarray(photos[name]) for name in ("t1", "obama", "biden", "astronaut")]  # type: ignore[attr-defined]
    # level width, height; canvas height, width; whether the windows fit (biden, 2,204 rows, is the tallest)
    for width, height, canvas_h, canvas_w, tiled_form in ((441, 305, 342, 491, True), (900, 620, 657, 950, True),
                                                          (1500, 1040, 1077, 1550, True), (900, 620, 600, 880, True),
                                                          (97, 70, 107, 147, False)):
        canvases = []
        for place in (cuda_ops.place_level, cuda_ops.place_level_per_pixel):
            out = cp.full((len(frames) + 1, canvas_h, canvas_w, 3), 7, cp.uint8)  # type: ignore[attr-defined]
            launches = len(per_pixel_launches)
            place(frames, width, height, out)
            if place is cuda_ops.place_level:
                assert (len(per_pixel_launches) == launches) == tiled_form, (width, height)
            canvases.append(out.get())
        tiled, reference = canvases
        assert (tiled[:, height:] == 7).all() and (tiled[:, :, width:] == 7).all() and (tiled[-1] == 7).all()
        picture = (slice(0, len(frames)), slice(0, min(height, canvas_h)), slice(0, min(width, canvas_w)))
        diff = np.abs(tiled[picture].astype(np.int16) - reference[picture])
        assert diff.max() <= 1 and diff.mean() < 0.01, (width, height, diff.max(), diff.mean())
        assert tiled[picture].std() > 20  # pictures, not a blank canvas


def assert_finds_what_the_cpu_finds(cp: object, cpu: Engines, gpu: Engines, photos: dict[str, np.ndarray],
                                    px: float, share: float, names: tuple[str, ...] = ("t1", "obama", "biden",
                                                                                     "astronaut")) -> None:
    """The same number of faces in each photo, every box within max(px, share x the widest face) of the CPU's."""
    for name in names:
        host = cpu.faces.detect([photos[name]])[0]
        dev = gpu.faces.detect([cp.asarray(photos[name])])[0]  # type: ignore[attr-defined]
        assert len(dev) == len(host), (name, len(dev), len(host))
        width = float((host.boxes[:, 2] - host.boxes[:, 0]).max())
        assert match(dev.boxes, host.boxes).max() <= max(px, share * width), name


def test_gpu_detector_finds_what_the_cpu_finds(cp: object, engines: Engines, gpu_engines: Engines,
                                               photos: dict[str, np.ndarray]) -> None:
    """The GPU's face detector runs BlazeFace's 20 narrowing depthwise-separable pairs folded
    (engines.convert.separable, engines.runtime.onnxruntime.FOLD_RULE)."""
    assert "20 separable pairs folded" in gpu_engines.faces.session.description, gpu_engines.faces.session.description
    assert_finds_what_the_cpu_finds(cp, engines, gpu_engines, photos, 3.0, 0.05)


def assert_embeds_as_the_cpu(cp: object, cpu: Engines, gpu: Engines, photos: dict[str, np.ndarray],
                             names: tuple[str, ...] = ("obama", "biden")) -> None:
    for name in names:
        _, host_emb = largest_face_embedding(cpu, photos[name])
        _, dev_emb = largest_face_embedding(gpu, cp.asarray(photos[name]))  # type: ignore[attr-defined]
        assert host_emb is not None and dev_emb is not None
        assert np.linalg.norm(host_emb - dev_emb) < 0.12, name


def test_gpu_engines_and_steps_take_the_batch_for_the_gpus_memory_and_sampling(cp: object, store: ModelStore) -> None:
    """With no batch asked for: 64 frames per detector run and per step when every frame is analysed on a GPU of
    48 GiB or more, else 32 (the default sampling, or a smaller GPU). (The module's engines ask for batches of 4.)"""
    from indexer.decode.nvdec import NvdecDecoder
    from indexer.pipeline import VideoIndexer

    total_gib = cp.cuda.Device().mem_info[1] / 2**30  # type: ignore[attr-defined]
    runtime = RuntimeConfig(device="gpu", engine_start="quick")
    for mode, expected in (("fps", 32), ("every-frame", 64 if total_gib >= 48 else 32)):
        loaded = load_engines(DetectionConfig(), runtime, store=store, warm_up=False, sampling_mode=mode)
        try:
            assert loaded.faces.batch_size == expected, mode
            assert loaded.persons is not None and loaded.persons.batch_size == expected, mode
            settings = IndexSettings(sampling=SamplingConfig(mode=mode), runtime=runtime)
            assert VideoIndexer(loaded, settings, NvdecDecoder()).frame_batch == expected, mode
        finally:
            del loaded
            gc.collect()


def test_quick_start_engines_find_what_the_cpu_finds(cp: object, engines: Engines, store: ModelStore,
                                                    photos: dict[str, np.ndarray]) -> None:
    """--engine-start quick (the FP16 models' depthwise convolutions run as ordinary ones, NCHW, unfused): the CPU's
    faces, boxes and embeddings within the default FP16 engines' distance of the CPU's (FP16 against FP32 and the
    GPU's own resampling). Batches of 4 and let go at the end, as in the FP16 test."""
    quick = load_engines(DetectionConfig(), RuntimeConfig(device="gpu", engine_start="quick", detector_batch=4),
                         store=store, warm_up=False)
    try:
        assert "quick start" in quick.faces.session.description, quick.faces.session.description
        assert_finds_what_the_cpu_finds(cp, engines, quick, photos, 4.0, 0.06)
        assert_embeds_as_the_cpu(cp, engines, quick, photos)
        assert quick.shapes_taken_over() == 0
    finally:
        del quick
        gc.collect()


def test_fastest_sessions_set_up_behind_take_over_and_find_what_the_cpu_finds(
        cp: object, engines: Engines, store: ModelStore, photos: dict[str, np.ndarray]) -> None:
    """--engine-start background (the default): a photo runs at once on quick sessions while the fastest ones
    (FP16, NHWC, fused bias, native depthwise convolutions) are set up behind them; once those have taken over,
    the same photo gives the CPU's faces and embedding again. One photo (obama.jpg), so that its
    shapes alone are set up behind (seconds each)."""
    from engines.runtime.onnxruntime import SET_UP_BEHIND

    both = load_engines(DetectionConfig(), RuntimeConfig(device="gpu", detector_batch=4), store=store, warm_up=False)
    one = ("obama",)
    try:
        assert "set up behind" in both.faces.session.description, both.faces.session.description
        assert_finds_what_the_cpu_finds(cp, engines, both, photos, 4.0, 0.06, one)
        assert_embeds_as_the_cpu(cp, engines, both, photos, one)
        assert SET_UP_BEHIND.wait(600)
        shapes = both.faces.session.shapes_set_up()  # type: ignore[attr-defined]
        assert shapes and set(both.faces.session.shapes_taken_over()) == shapes  # type: ignore[attr-defined]
        assert_finds_what_the_cpu_finds(cp, engines, both, photos, 4.0, 0.06, one)
        assert_embeds_as_the_cpu(cp, engines, both, photos, one)
    finally:
        del both
        gc.collect()


def test_gpu_embeddings_match_the_cpu(cp: object, engines: Engines, gpu_engines: Engines,
                                      photos: dict[str, np.ndarray]) -> None:
    embs = {}
    for name in ("obama", "obama2", "obama3", "biden"):
        _, host = largest_face_embedding(engines, photos[name])
        _, dev = largest_face_embedding(gpu_engines, cp.asarray(photos[name]))  # type: ignore[attr-defined]
        assert host is not None and dev is not None
        # The GPU scales pyramid levels and warps chips with one triangle filter, the CPU with Pillow's
        # box pre-shrink + bilinear, so keypoints differ by a fraction of a model pixel: 0.02-0.06 apart on
        # the H100 (FP32 and FP16). For scale: the CPU path alone moves these embeddings by up to 0.14 when
        # the photo is shifted by 3-7 px (docs/models.md).
        assert np.linalg.norm(host - dev) < 0.1, name
        embs[name] = dev
    assert np.linalg.norm(embs["obama"] - embs["obama2"]) < 0.6
    assert np.linalg.norm(embs["obama"] - embs["biden"]) > 0.6


def _face_chips_and_a_flat_one(engines: Engines, photos: dict[str, np.ndarray]) -> np.ndarray:
    frames = [photos[name] for name in ("obama", "biden", "astronaut", "t1")]
    found = engines.faces.detect(frames)
    index = [f for f, d in enumerate(found) for _ in range(len(d))]
    chips = engines.embedder.chips(frames, index, np.concatenate([d.keypoints for d in found]))
    return np.concatenate([chips, np.full((1, *chips.shape[1:]), 128, np.uint8)])


def test_gpu_chip_sharpness_is_the_hosts(cp: object, engines: Engines, photos: dict[str, np.ndarray]) -> None:
    """The one-launch sharpness kernel gives the host's Laplacian variance for real face chips and a flat one."""
    from engines.imageops import laplacian_variance

    chips = _face_chips_and_a_flat_one(engines, photos)
    host = laplacian_variance(chips)
    dev = laplacian_variance(cp.asarray(chips))  # type: ignore[attr-defined]
    assert len(chips) > 4 and host[-1] == 0 and (host[:-1] > 1).all(), host
    np.testing.assert_allclose(dev, host, rtol=1e-4, atol=1e-3)


def test_gpu_embeds_the_sharp_chips_as_the_cpu_does(cp: object, engines: Engines, gpu_engines: Engines,
                                                   photos: dict[str, np.ndarray]) -> None:
    """On the GPU every chip is embedded and comes back with its sharpness in one copy: the same sharpness, the
    same chips kept as the CPU (which embeds only the sharp ones), their descriptors within FP16's reach of the
    CPU's, and none for the flat chip."""
    chips = _face_chips_and_a_flat_one(engines, photos)
    sharp, ok, embeddings = engines.embedder.embed_sharp(chips, 1.0)
    dev_sharp, dev_ok, dev_embeddings = gpu_engines.embedder.embed_sharp(cp.asarray(chips), 1.0)  # type: ignore[attr-defined]
    np.testing.assert_allclose(dev_sharp, sharp, rtol=1e-4, atol=1e-3)
    assert ok[:-1].all() and not ok[-1] and (dev_ok == ok).all()
    assert not embeddings[-1].any() and not dev_embeddings[-1].any()
    apart = np.linalg.norm(dev_embeddings[:-1] - embeddings[:-1], axis=1)
    assert apart.max() < 0.05, apart


def test_fp16_engines_find_the_same_faces_and_people(cp: object, gpu_engines: Engines, store: ModelStore,
                                                     photos: dict[str, np.ndarray]) -> None:
    """--engine onnxruntime-fp16: the FP16 copies of the models give the FP32 faces, boxes within a few
    pixels, and embeddings close enough that identities do not change. The FP16 set is a second set of
    per-shape sessions, each with its own GPU memory arena, beside the FP32 set's: it runs batches of 4
    (padding changes no image's result) on photos scaled onto one canvas size (its fastest sessions take tens
    of seconds to set up per frame size) and is let go at the end, failed or not (a failed test's traceback
    would otherwise keep it, and its memory, for the rest of the run)."""
    fp16 = load_engines(DetectionConfig(), RuntimeConfig(device="gpu", engine="onnxruntime-fp16", detector_batch=4,
                                                         engine_start="wait"), store=store, warm_up=False)
    try:
        compare_fp16(cp, gpu_engines, fp16, photos)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the failing frames' locals hold fp16 too
        raise
    finally:
        del fp16
        gc.collect()


@pytest.mark.parametrize(("model", "size"), [("face_detector", 320), ("person_detector", 320), ("face_embedder", 150)])
def test_cuda_graph_replays_give_the_plain_runs_outputs(cp: object, store: ModelStore, photos: dict[str, np.ndarray],
                                                        monkeypatch: pytest.MonkeyPatch, model: str, size: int) -> None:
    """Each shape's second run is recorded as a CUDA graph and later runs replay it: on different real photos in
    turn (a replay must read each run's own input, not the recorded one), then from two threads at once, the
    fastest FP16 sessions give with graphs what they give without, also when replays are queued back to back
    before any is read, and every model's shape records (the person detector's too: its grid arithmetic folds
    once the input's dimensions are fixed)."""
    from concurrent.futures import ThreadPoolExecutor

    from engines.imageops import resize
    from engines.runtime.onnxruntime import CUDA_GRAPHS_ENV, OnnxRuntimeSession

    loaded = store.load(model)  # type: ignore[arg-type]
    graphs = OnnxRuntimeSession(loaded, device="cuda", fp16=True)
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    plain = OnnxRuntimeSession(loaded, device="cuda", fp16=True)
    assert graphs.cuda_graphs and not plain.cuda_graphs and "CUDA graphs" in graphs.description
    name = "chips" if model == "face_embedder" else "image"
    names = ("t1", "obama", "biden", "astronaut")
    images = {p: np.stack([resize(photos[p], size, size)] * 2) for p in names}

    def run(session: OnnxRuntimeSession, photo: str) -> dict[str, np.ndarray]:
        return {k: v.get() for k, v in session.run({name: cp.asarray(images[photo])}).items()}  # type: ignore[attr-defined]

    want = {p: run(plain, p) for p in names}
    assert any(not np.array_equal(want["t1"][k], want["obama"][k]) for k in want["t1"])  # not a blank comparison

    def check(photo: str, got: dict[str, np.ndarray]) -> None:
        assert got.keys() == want[photo].keys()
        for key, value in want[photo].items():
            np.testing.assert_allclose(got[key], value, rtol=1e-3, atol=1e-3, err_msg=f"{photo} {key}")

    for photo in (*names, "t1"):  # the first run plain, the second recorded, the rest replays
        check(photo, run(graphs, photo))
    assert graphs.cuda_graph_shapes() == (1, 0) and plain.cuda_graph_shapes() == (0, 0)
    # replays return once queued: several queued back to back on a stream of the caller's, read afterwards
    with cp.cuda.Stream(non_blocking=True):  # type: ignore[attr-defined]
        queued = [(p, graphs.run({name: cp.asarray(images[p])})) for p in (*names, *reversed(names))]  # type: ignore[attr-defined]
        for photo, outputs in queued:
            check(photo, {k: v.get() for k, v in outputs.items()})
    order = [names[i % len(names)] for i in range(24)]
    with ThreadPoolExecutor(2) as pool:
        for photo, got in zip(order, pool.map(partial(run, graphs), order), strict=True):
            check(photo, got)


def on_canvas(photo: np.ndarray, side: int = 1024) -> np.ndarray:
    """The photo scaled to fit a side x side black canvas, at its top left."""
    from engines.imageops import resize

    scale = side / max(photo.shape[:2])
    h, w = round(photo.shape[0] * scale), round(photo.shape[1] * scale)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[:h, :w] = resize(photo, h, w)
    return canvas


def compare_fp16(cp: object, fp32: Engines, fp16: Engines, photos: dict[str, np.ndarray]) -> None:
    assert "FP16 NHWC fused" in fp16.faces.session.description, fp16.faces.session.description
    embs = {}
    for name in ("t1", "obama", "obama2", "biden", "astronaut"):
        image = cp.asarray(on_canvas(photos[name]))  # type: ignore[attr-defined]
        full, half = fp32.faces.detect([image])[0], fp16.faces.detect([image])[0]
        assert len(half) == len(full), (name, len(half), len(full))
        width = float((full.boxes[:, 2] - full.boxes[:, 0]).max())
        assert match(half.boxes, full.boxes).max() <= max(3.0, 0.03 * width), name
        assert fp32.persons is not None and fp16.persons is not None
        assert len(fp16.persons.detect([image])[0]) == len(fp32.persons.detect([image])[0]), name
        if name != "t1":
            _, e32 = largest_face_embedding(fp32, image)
            _, e16 = largest_face_embedding(fp16, image)
            assert e32 is not None and e16 is not None
            assert np.linalg.norm(e32 - e16) < 0.03, name
            embs[name] = e16
    assert np.linalg.norm(embs["obama"] - embs["obama2"]) < 0.6
    assert np.linalg.norm(embs["obama"] - embs["biden"]) > 0.6


def test_regions_copied_by_the_copy_engine_are_the_device_slices(cp: object) -> None:
    from engines.arrays import regions_to_host

    rng = np.random.default_rng(1)
    frames = cp.asarray(rng.integers(0, 255, (2, 1080, 1920, 3), dtype=np.uint8))  # type: ignore[attr-defined]
    chips = cp.asarray(rng.integers(0, 255, (5, 150, 150, 3), dtype=np.uint8))  # type: ignore[attr-defined]
    grey = cp.asarray(rng.integers(0, 255, (64, 96), dtype=np.uint8))  # type: ignore[attr-defined]
    strided = frames[1, :, ::2]  # pixels not packed in their rows: copied through a contiguous array
    flipped = frames[0, ::-1]  # rows running backwards: likewise
    regions = [(frames[1], 3, 901, 17, 333), (chips[3], 0, 150, 0, 150), (frames[0], 1079, 1080, 0, 1920),
               (grey, 5, 60, 1, 95), (strided, 10, 20, 30, 40), (flipped, 0, 7, 9, 19)]
    stream = cp.cuda.Stream(non_blocking=True)  # type: ignore[attr-defined]
    with stream:
        out = regions_to_host(regions)
    for (image, y0, y1, x0, x1), host in zip(regions, out, strict=True):
        assert np.array_equal(host, image[y0:y1, x0:x1].get())


def decode_all(decoder: object, path: Path, mode: str) -> tuple[np.ndarray, list[np.ndarray]]:
    from engines.arrays import to_host

    pts, frames = [], []
    for batch in decoder.batches(path, SamplingConfig(mode=mode), 16):  # type: ignore[attr-defined]
        pts.extend(batch.pts_s.tolist())
        frames.extend(to_host(batch.frames))
    return np.asarray(pts), frames


@pytest.mark.parametrize("mode", ["every-frame", "keyframes"])
def test_nvdec_frames_and_timestamps_match_pyav(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult],
                                                mode: str) -> None:
    from indexer.decode.nvdec import NvdecDecoder
    from indexer.decode.pyav import PyAVDecoder

    videos = indexed[0]
    for video in videos:
        nv = NvdecDecoder()
        gpu_pts, gpu_frames = decode_all(nv, Path(video.path), mode)
        cpu_pts, cpu_frames = decode_all(PyAVDecoder(), Path(video.path), mode)
        assert nv.fell_back is None, (video.name, nv.fell_back)
        assert len(gpu_pts) == len(cpu_pts) > 0, (video.name, len(gpu_pts), len(cpu_pts))
        assert np.abs(gpu_pts - cpu_pts).max() < 1e-6, video.name
        assert gpu_frames[0].shape == cpu_frames[0].shape == (video.height, video.width, 3), video.name
        diff = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(gpu_frames, cpu_frames, strict=True)])
        assert diff < 4.0, (video.name, diff)  # colour-matrix rounding, not different pictures


def test_reused_nvdec_decoders_give_what_fresh_ones_give(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult]
                                                        ) -> None:
    """A decoder flushed at the end of one video decodes the next of its kind like a new one: same frames,
    same timestamps, in any order (the pool keeps them between videos)."""
    from indexer.decode.nvdec import DECODERS, NvdecDecoder

    paths = [Path(v.path) for v in indexed[0]]
    fresh = {}
    for path in paths:
        DECODERS.clear()
        fresh[path] = decode_all(NvdecDecoder(), path, "every-frame")
    reused_before = DECODERS.reused
    for path in paths + paths[::-1]:
        pts, frames = decode_all(NvdecDecoder(), path, "every-frame")
        assert np.array_equal(pts, fresh[path][0]), path.name
        assert len(frames) == len(fresh[path][1]), path.name
        assert all(np.array_equal(a, b) for a, b in zip(frames, fresh[path][1], strict=True)), path.name
    assert DECODERS.reused - reused_before >= len(paths), (DECODERS.reused, reused_before, DECODERS.created)


def test_nvdec_skips_unsampled_frames_and_samples_the_same(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult]
                                                          ) -> None:
    """At 2 fps, leaving out the non-reference pictures no sample needs gives bit for bit the frames, times and
    frame indexes that decoding everything gives (H.264 and HEVC, variable rate and rotated clips included)."""
    from engines.arrays import to_host
    from indexer.decode.nvdec import NvdecDecoder
    from indexer.decode.pyav import PyAVDecoder

    decoded: dict[tuple[str, bool], int] = {}
    for video in indexed[0]:
        path = Path(video.path)
        runs = {}
        for skip in (False, True):
            nv = NvdecDecoder(skip_unsampled=skip)
            batches = list(nv.batches(path, SamplingConfig(), 16))
            assert nv.fell_back is None, (video.name, nv.fell_back)
            decoded[video.codec, skip] = decoded.get((video.codec, skip), 0) + nv.stats.frames_decoded
            runs[skip] = (nv.stats.frames_in_video, np.concatenate([b.pts_s for b in batches]),
                          np.concatenate([b.frame_index for b in batches]),
                          [f for b in batches for f in to_host(b.frames)])
        (n_all, pts_all, index_all, frames_all), (n_some, pts_some, index_some, frames_some) = runs[False], runs[True]
        assert n_all == n_some > 0 and np.array_equal(pts_all, pts_some), video.name
        assert np.array_equal(index_all, index_some), video.name
        assert all(np.array_equal(a, b) for a, b in zip(frames_all, frames_some, strict=True)), video.name
        cpu = [b for b in PyAVDecoder().batches(path, SamplingConfig(), 16)]
        assert np.concatenate([b.frame_index for b in cpu]).tolist() == index_some.tolist(), video.name
    for codec in {video.codec for video in indexed[0]}:  # both H.264 and HEVC left B-frames out
        assert decoded[codec, True] < 0.8 * decoded[codec, False], decoded


@pytest.mark.parametrize(("engine", "start"), [("onnxruntime", "background"), ("auto", "background"),
                                               ("auto", "wait")])
def test_gpu_pipeline_gives_the_cpu_tracks(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult],
                                           tmp_path: Path, cache_dir: Path, engine: str, start: str) -> None:
    """NVDEC + CUDA kernels + ONNX Runtime CUDA (FP32, and FP16 as chosen automatically on a GPU), several
    videos in flight, against the CPU run: from the first frame on quick sessions with the fastest taking over
    when ready (the default), and on the fastest alone."""
    videos, _, cpu_catalog, _ = indexed
    archive = Path(videos[0].path).parent
    catalog = Catalog(default_db_url(tmp_path / "out"))
    settings = IndexSettings(runtime=RuntimeConfig(device="gpu", engine=engine, frame_batch=8,  # type: ignore[arg-type]
                                                   videos_in_flight=4, engine_start=start))  # type: ignore[arg-type]
    result = run_job(archive, catalog=catalog, out_uri=str(tmp_path / "out"), settings=settings,
                     executor=LocalExecutor(), cache_dir=cache_dir)
    assert result.summary.done == len(videos)
    assert_same_tracks(cpu_catalog, catalog, [v.name for v in videos], max_l2=0.15, slack_s=INTERVAL + 0.05,
                       persons=False)
