"""Choosing a runtime, the ONNX Runtime session, the FP16 graph for TensorRT, and TensorRT where it exists."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.convert.fp16 import to_float16
from engines.errors import RuntimeUnavailable
from engines.runtime.base import (
    RuntimeReport,
    cpu_cores,
    cpu_run_threads,
    cpu_runs_at_once,
    open_session,
    resolve_device,
    resolve_runtime,
)
from engines.zoo import ModelStore

CPU_ONLY = RuntimeReport(cuda_devices=0, onnxruntime_providers=("CPUExecutionProvider",), tensorrt_version=None)
GPU_ORT = RuntimeReport(1, ("CUDAExecutionProvider", "CPUExecutionProvider"), None)
GPU_TRT = RuntimeReport(1, ("CUDAExecutionProvider", "CPUExecutionProvider"), "10.13.0")


def test_automatic_choice_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert resolve_runtime("auto", resolve_device("auto", GPU_TRT), GPU_TRT) == "tensorrt"
    assert resolve_runtime("auto", resolve_device("auto", GPU_ORT), GPU_ORT) == "onnxruntime"
    assert resolve_device("auto", GPU_ORT) == "cuda"
    assert resolve_device("auto", CPU_ONLY) == "cpu"
    assert resolve_device("cpu", GPU_TRT) == "cpu"


def test_asking_for_what_is_missing_says_what_to_do() -> None:
    with pytest.raises(RuntimeUnavailable, match="--device cpu"):
        resolve_device("gpu", CPU_ONLY)
    with pytest.raises(RuntimeUnavailable, match="tensorrt"):
        resolve_runtime("tensorrt", "cuda", GPU_ORT)


def test_cpu_session_describes_itself(store: ModelStore) -> None:
    session = open_session(store.load("face_embedder"), device="cpu", report=CPU_ONLY)
    assert session.runtime == "onnxruntime" and session.device == "cpu"
    assert "CPUExecutionProvider" in session.description
    out = session.run({"chips": np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)})
    assert out["embedding"].shape == (3, 128)
    with pytest.raises(ValueError, match="no input"):
        session.run({"image": np.zeros((1, 150, 150, 3), np.uint8)})


def test_cpu_sessions_share_the_cores_between_two_runs_unless_asked_for_all(
        store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline runs two steps at once on a CPU, each on half of the cores the process may use (fewer where
    OMP_NUM_THREADS says so, as Ray sets it for a worker); a photo query runs one model at a time, on every core."""
    from search.query import query_engines

    def threads(session: object) -> int:
        return int(session._session.get_session_options().intra_op_num_threads)  # type: ignore[attr-defined]

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cores, at_once, per_run in [(1, 1, 1), (2, 2, 1), (3, 2, 1), (16, 2, 8)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert (cpu_cores(), cpu_runs_at_once(), cpu_run_threads()) == (cores, at_once, per_run)
    eight = open_session(store.load("face_embedder"), device="cpu", report=CPU_ONLY)
    assert threads(eight) == 8 and eight.description.endswith(", 8 threads a run"), eight.description
    assert threads(open_session(store.load("face_embedder"), device="cpu", report=CPU_ONLY, threads=3)) == 3
    engines = query_engines(store, "cpu")
    assert threads(engines.faces.session) == threads(engines.embedder.session) == 16
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # a Ray actor with num_cpus=4 on this 16-core machine
    assert (cpu_cores(), cpu_runs_at_once(), cpu_run_threads()) == (4, 2, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # more than the machine has: the machine's
    assert cpu_cores() == 16


def test_fp16_onnxruntime_is_a_gpu_choice_and_the_cpu_keeps_fp32(store: ModelStore) -> None:
    assert resolve_runtime("onnxruntime-fp16", "cuda", GPU_TRT) == "onnxruntime"  # asked for: not TensorRT
    session = open_session(store.load("face_embedder"), device="cpu", engine="onnxruntime-fp16", report=CPU_ONLY)
    assert session.device == "cpu" and "FP16" not in session.description


def test_int8_is_the_cpus_person_detector_only_and_has_its_own_run_key(store: ModelStore) -> None:
    """`--engine onnxruntime-int8` quantizes the person detector alone, on a CPU; its results are kept under a
    run key of their own (it changes person tracks), while the other engines share the default's key."""
    from schemas.config import IndexSettings, RuntimeConfig, run_key

    assert resolve_runtime("onnxruntime-int8", "cuda", GPU_TRT) == "onnxruntime"
    int8 = open_session(store.load("person_detector"), device="cpu", engine="onnxruntime-int8", report=CPU_ONLY)
    assert "INT8" in int8.description
    embedder = open_session(store.load("face_embedder"), device="cpu", engine="onnxruntime-int8", report=CPU_ONLY)
    assert "INT8" not in embedder.description
    keys = {engine: run_key("3", {}, IndexSettings(runtime=RuntimeConfig(engine=engine)).result_params())
            for engine in ("auto", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8")}
    assert len({keys["auto"], keys["onnxruntime"], keys["onnxruntime-fp16"]}) == 1
    assert keys["onnxruntime-int8"] != keys["auto"]


def convolutions(model: onnx.ModelProto) -> tuple[int, int]:
    """The model's Conv nodes, and how many of them are grouped (BlazeFace's: depthwise)."""
    conv = [n for n in model.graph.node if n.op_type == "Conv"]
    return len(conv), sum(any(a.name == "group" and a.i > 1 for a in n.attribute) for n in conv)


def test_quick_start_runs_the_face_detectors_depthwise_convolutions_dense_with_the_same_results(
        store: ModelStore, photos: dict[str, np.ndarray]) -> None:
    """Quick sessions (--engine-start quick, and the first ones of the default background start) rewrite
    BlazeFace's 42 depthwise convolutions as ordinary ones with diagonal weights (cuDNN sets those up without
    compiling plans at run time): none is left, and a real photo gives the same outputs bit for bit on the CPU.
    Only CUDA sessions are rewritten; the engine start is not part of the run key."""
    import onnxruntime as ort

    from engines.convert.depthwise import dense_depthwise, has_depthwise
    from engines.imageops import resize
    from schemas.config import IndexSettings, RuntimeConfig, run_key

    model = onnx.load(str(store.load("face_detector").path))
    dense = dense_depthwise(model)

    assert convolutions(model)[1] == 42 and convolutions(dense)[1] == 0
    assert has_depthwise(model) and not has_depthwise(dense)
    assert not has_depthwise(onnx.load(str(store.load("person_detector").path)))
    image = resize(photos["t1"], 192, 192)[None]
    name = model.graph.input[0].name
    before, after = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {name: image}) for m in (model, dense))
    assert any(float(o.max()) > 0.65 for o in before[1:])  # the photo's faces score: not a blank comparison
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    for start in ("quick", "background"):
        cpu = open_session(store.load("face_detector"), device="cpu", report=CPU_ONLY, start=start)
        assert "quick start" not in cpu.description and cpu.shapes_set_up() is None  # type: ignore[attr-defined]
    keys = {run_key("4", {}, IndexSettings(runtime=RuntimeConfig(engine_start=start)).result_params())
            for start in ("background", "wait", "quick")}
    assert len(keys) == 1


def test_separable_pairs_fold_into_one_convolution_with_the_same_results(
        store: ModelStore, photos: dict[str, np.ndarray]) -> None:
    """A depthwise convolution that feeds only a 1 x 1 one folds with it into one ordinary convolution: BlazeFace's
    40 such pairs become 40 convolutions (2 depthwise ones feed something else and stay), and a real photo's
    faces score and sit as before (FP32 on the CPU). GPU sessions fold the 20 narrowing pairs (FOLD_RULE); CPU
    sessions keep them all. The person detector has none."""
    import onnxruntime as ort

    from engines.convert.separable import fold_separable, separable_pairs
    from engines.imageops import resize
    from engines.runtime.onnxruntime import FOLD_RULE

    model = onnx.load(str(store.load("face_detector").path))
    pairs = separable_pairs(model)
    assert len(pairs) == 40 and pairs[:2] == [(32, 8), (8, 32)]
    folded = fold_separable(model)
    narrowed = fold_separable(model, FOLD_RULE)
    onnx.checker.check_model(folded)

    assert convolutions(model) == (91, 42) and convolutions(folded) == (51, 2) and separable_pairs(folded) == []
    assert separable_pairs(narrowed) == [(c_in, c_out) for c_in, c_out in pairs if c_out >= c_in]
    assert convolutions(narrowed) == (71, 22)
    image = np.stack([resize(photos["t1"], 384, 640), resize(photos["obama"], 384, 640)])
    name = model.graph.input[0].name
    before, after = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {name: image}) for m in (model, folded))
    boxes, scores = before
    assert (scores > 0.65).sum() >= 5  # faces found: not a blank comparison
    np.testing.assert_allclose(after[1], scores, atol=1e-5)
    np.testing.assert_allclose(after[0], boxes, atol=1e-3 * float(np.abs(boxes).max()))
    assert separable_pairs(onnx.load(str(store.load("person_detector").path))) == []
    cpu = open_session(store.load("face_detector"), device="cpu", report=CPU_ONLY)
    assert cpu.folded == 0 and "folded" not in cpu.description  # type: ignore[attr-defined]


def test_gpu_graph_forms_are_made_once_and_then_read_without_the_onnx_package(
        store: ModelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU session's graphs (FP16, narrowing pairs folded, and for quick sessions depthwise convolutions dense)
    are made on first use beside the model and read from there by later processes, which import no `onnx`; other
    options make a set of their own beside it, a new model version replaces the old sets, an unreadable record or a
    damaged graph is made again, and where the cache cannot be written the process runs the graphs it made and
    removes nothing."""
    import dataclasses
    import hashlib
    import json
    import logging
    import subprocess
    import sys

    import engines.convert.forms
    from engines.convert import depthwise
    from engines.convert.forms import graph_forms
    from engines.convert.separable import fold_separable
    from engines.runtime.onnxruntime import FOLD_RULE
    from engines.zoo import ModelFile

    cached = store.load("face_detector")
    copy = tmp_path / "models" / cached.path.name
    copy.parent.mkdir()
    copy.write_bytes(cached.path.read_bytes())
    folder = tmp_path / "models" / "forms"
    model = ModelFile(cached.spec, copy, cached.provenance)
    forms = graph_forms(model, str(copy), fp16=True, dense=True, fold=FOLD_RULE)
    expected = to_float16(fold_separable(onnx.load(str(copy)), FOLD_RULE))
    assert forms.folded == 20
    assert forms.fastest == expected.SerializeToString()
    assert forms.quick == depthwise.dense_depthwise(expected).SerializeToString()
    made = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert len(made) == 3  # the two graphs and the record that names them, written last

    later = subprocess.run([sys.executable, "-c", f"""
import hashlib, sys
from pathlib import Path
from engines.convert.forms import graph_forms
from engines.runtime.onnxruntime import FOLD_RULE
from engines.zoo import ModelFile, ModelStore
cached = ModelStore(Path({str(store.cache_dir)!r})).load("face_detector")
model = ModelFile(cached.spec, Path({str(copy)!r}), cached.provenance)
forms = graph_forms(model, {str(copy)!r}, fp16=True, dense=True, fold=FOLD_RULE)
print(hashlib.sha256(forms.fastest).hexdigest(), hashlib.sha256(forms.quick).hexdigest(), forms.folded,
      "onnx" in sys.modules)
"""], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    digests = [hashlib.sha256(g).hexdigest() for g in (forms.fastest, forms.quick)]  # type: ignore[arg-type]
    assert later.stdout.split() == [*digests, "20", "False"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == made  # read, not made again

    fp32 = graph_forms(model, str(copy), fp16=False, dense=False, fold=FOLD_RULE)
    assert fp32.folded == 20 and fp32.fastest is fp32.quick and fp32.fastest == fold_separable(
        onnx.load(str(copy)), FOLD_RULE).SerializeToString()
    assert len(list(folder.iterdir())) == 5 and all((folder / name).exists() for name in made)
    assert graph_forms(model, str(copy), fp16=False, dense=False, fold=None).fastest == str(copy)

    newer = dataclasses.replace(model, provenance=dataclasses.replace(model.provenance, onnx_sha256="0" * 64))
    monkeypatch.setattr(engines.convert.forms, "write_atomic", _disk_full)
    with caplog.at_level(logging.WARNING, logger="engines.convert.forms"):
        unwritten = graph_forms(newer, str(copy), fp16=True, dense=True, fold=FOLD_RULE)
    assert (unwritten.fastest, unwritten.quick, unwritten.folded) == (forms.fastest, forms.quick, 20)
    assert "cannot cache the GPU forms" in caplog.text and len(list(folder.iterdir())) == 5  # nothing removed
    monkeypatch.undo()
    renewed = graph_forms(newer, str(copy), fp16=True, dense=True, fold=FOLD_RULE)
    assert (renewed.fastest, renewed.quick) == (forms.fastest, forms.quick)
    assert not any((folder / name).exists() for name in made) and len(list(folder.iterdir())) == 3
    (record,) = folder.glob("*.json")
    record.write_text("{")  # left unreadable: made again
    assert graph_forms(newer, str(copy), fp16=True, dense=True, fold=FOLD_RULE).quick == forms.quick
    assert json.loads(record.read_text())["folded"] == 20
    (quick_file,) = folder.glob("*-quick.onnx")
    damaged = bytearray(quick_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    quick_file.write_bytes(bytes(damaged))  # a damaged file: checked against its record, made again
    with caplog.at_level(logging.WARNING, logger="engines.convert.forms"):
        assert graph_forms(newer, str(copy), fp16=True, dense=True, fold=FOLD_RULE).quick == forms.quick
    assert "is damaged: made again" in caplog.text and quick_file.read_bytes() == forms.quick


def _disk_full(path: Path, data: bytes) -> None:
    raise OSError(28, "No space left on device", str(path))


@pytest.mark.parametrize("name", ["face_detector", "person_detector", "face_embedder"])
def test_fp16_graph_for_strongly_typed_tensorrt(store: ModelStore, name: str) -> None:
    """The FP16 copy keeps uint8 input and float32 outputs and computes in float16."""
    model = onnx.load(str(store.load(name).path))
    half = to_float16(model)
    graph = half.graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)
    weights = [i for i in graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in weights) > 0.9 * len(weights)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="tensorrt is not installable here (PyPI ships a stub that downloads from NVIDIA's index)")
def test_tensorrt_engine_matches_onnxruntime(store: ModelStore, tmp_path: object) -> None:
    from engines.runtime.tensorrt import TensorRTSession

    model = store.load("face_embedder")
    trt_session = TensorRTSession(model, max_batch=8)
    chips = np.random.default_rng(0).integers(0, 256, (4, 150, 150, 3), dtype=np.uint8)
    got = trt_session.run({"chips": chips})["embedding"].get()
    ref = open_session(model, device="cpu", report=CPU_ONLY).run({"chips": chips})["embedding"]
    assert np.abs(got - ref).max() < 2e-2  # FP16
    assert trt_session.plan_path.exists()


def test_shape_sessions_are_bounded_and_evict_the_least_recently_used() -> None:
    """CUDA sessions per input shape: each opened for its shape's inputs, a shape met again gets its session
    back, and beyond the limit the least recently used shape goes."""
    from engines.runtime.onnxruntime import ShapeSessions

    made: list[tuple[object, object]] = []

    def new(spec: object) -> object:
        made.append((spec, object()))
        return made[-1][1]

    def spec(shape: tuple[int, ...]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        return (("image", shape, "|u1"),)

    sessions = ShapeSessions(new, limit=3)
    a = sessions.get((1, 2), lambda: spec((1, 2)))
    b, c = sessions.get((3, 4), lambda: spec((3, 4))), sessions.get((5, 6), lambda: spec((5, 6)))
    assert sessions.get((1, 2)) is a and sessions.get((3, 4)) is b  # (5, 6) is now the least recent
    d = sessions.get((7, 8), lambda: spec((7, 8)))
    assert sessions.shapes() == [(1, 2), (3, 4), (7, 8)] and sessions.evicted == 1
    assert sessions.get((5, 6), lambda: spec((5, 6))) not in (a, b, c, d)  # set up again, evicting (1, 2)
    assert sessions.shapes() == [(3, 4), (7, 8), (5, 6)] and len(made) == 5 and made[-1][0] == spec((5, 6))
    assert sessions.sessions() == [b, d, made[-1][1]]


def test_faster_sessions_set_up_behind_take_over_from_the_quick_ones(store: ModelStore,
                                                                    photos: dict[str, np.ndarray]) -> None:
    """The default engine start on a GPU, with real ONNX Runtime sessions (on the CPU here): a new shape runs at
    once on its quick session (depthwise convolutions dense) while its faster one (the model as it is) is set up
    behind it and then takes over, with the same outputs; a shape evicted before its turn is not set up, and at
    close the waiting set-ups are dropped."""
    import threading

    import onnxruntime as ort

    from engines.convert.depthwise import dense_depthwise
    from engines.imageops import resize
    from engines.runtime.onnxruntime import OnnxRuntimeSession, SetUpBehind, ShapeSessions

    loaded = store.load("face_detector")
    model = onnx.load(str(loaded.path))
    quick_graph, fast_graph = dense_depthwise(model).SerializeToString(), model.SerializeToString()
    product = OnnxRuntimeSession(loaded, device="cpu")  # for the options each CUDA shape's session has
    name = model.graph.input[0].name
    release = threading.Event()
    set_up: list[tuple[int, ...]] = []

    def quick(spec: tuple[tuple[str, tuple[int, ...], str], ...]) -> ort.InferenceSession:
        return ort.InferenceSession(quick_graph, product._shape_options(spec), providers=["CPUExecutionProvider"])

    def faster(spec: tuple[tuple[str, tuple[int, ...], str], ...]) -> ort.InferenceSession:
        release.wait(30)  # behind: held until the quick session has run
        session = ort.InferenceSession(fast_graph, providers=["CPUExecutionProvider"])
        session.run(None, {n: np.zeros(shape, np.dtype(dtype)) for n, shape, dtype in spec})
        set_up.append(spec[0][1])
        return session

    behind = SetUpBehind()
    sessions = ShapeSessions(quick, limit=2, faster=faster, behind=behind)
    image = resize(photos["t1"], 192, 192)[None]
    spec = ((name, image.shape, image.dtype.str),)
    first = sessions.get(image.shape, lambda: spec)
    before = first.run(None, {name: image})
    assert sessions.taken_over() == {} and behind.pending() == 1
    release.set()
    assert behind.wait(60)
    fast = sessions.get(image.shape, lambda: spec)
    assert fast is not first and list(sessions.taken_over()) == [image.shape]
    for b, a in zip(before, fast.run(None, {name: image}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert any(float(o.max()) > 0.65 for o in before[1:])  # the photo's faces score: not a blank comparison

    release.clear()  # the next set-up waits: the shape after it is evicted before its turn
    small = ((name, (1, 64, 64, 3), "|u1"),)
    sessions.get((1, 64, 64, 3), lambda: small)
    sessions.get((1, 96, 96, 3), lambda: ((name, (1, 96, 96, 3), "|u1"),))
    sessions.get((1, 64, 64, 3), lambda: small)  # the 96 px shape is now the least recently used
    sessions.get((1, 128, 128, 3), lambda: ((name, (1, 128, 128, 3), "|u1"),))  # evicts it (limit 2)
    release.set()
    assert behind.wait(60)
    assert set_up == [image.shape, (1, 64, 64, 3), (1, 128, 128, 3)]
    release.clear()  # at close, the set-up under way ends and the one waiting is dropped
    sessions.get((1, 32, 32, 3), lambda: ((name, (1, 32, 32, 3), "|u1"),))
    sessions.get((1, 160, 160, 3), lambda: ((name, (1, 160, 160, 3), "|u1"),))
    threading.Timer(0.5, release.set).start()
    behind.close()
    assert set_up[-1] == (1, 32, 32, 3) and (1, 160, 160, 3) not in set_up
    sessions.get((1, 192, 192, 3), lambda: ((name, (1, 192, 192, 3), "|u1"),))  # after close: its quick session only
    assert behind.pending() == 0 and (1, 192, 192, 3) not in sessions.taken_over()


def test_side_by_side_runs_every_call_in_its_own_thread_and_raises_the_first_error() -> None:
    import threading

    from engines.streams import side_by_side

    seen: list[int] = []
    barrier = threading.Barrier(3, timeout=10)  # passes only if all three calls run at once

    def call() -> None:
        barrier.wait()
        seen.append(threading.get_ident())

    side_by_side([call, call, call], "test")
    assert len(set(seen)) == 3

    def fails() -> None:
        raise ValueError("set-up failed")

    with pytest.raises(ValueError, match="set-up failed"):
        side_by_side([fails, lambda: None], "test")


def test_objects_held_for_queued_gpu_work_are_let_go_once_their_event_has_happened() -> None:
    """IN_FLIGHT's rule, with events that happen when told to (on a GPU, CUDA events recorded after the work):
    an object is held while its event has not happened, whoever else drops it, and let go at the next hold
    once it has, oldest first."""
    import gc
    import weakref

    from engines.streams import InFlight

    class Event:
        done = False

    class Buffer:
        pass

    held = InFlight()
    first, second = Event(), Event()
    a, b = Buffer(), Buffer()
    gone_a, gone_b = weakref.ref(a), weakref.ref(b)
    held.hold(first, a)
    held.hold(second, b)
    del a, b
    gc.collect()
    assert gone_a() is not None and gone_b() is not None and len(held) == 2
    second.done = True  # the second stream finished first: held until the one before it is done too
    held.hold(Event())
    assert gone_b() is not None and len(held) == 3
    first.done = True
    held.hold(Event())
    gc.collect()
    assert gone_a() is None and gone_b() is None and len(held) == 2


def test_capture_gate_keeps_captures_apart_from_device_wide_work() -> None:
    """CaptureGate's rule: work `apart` waits for the captures under way, no capture starts while such work runs
    or waits (the capture is postponed, not refused for good), and captures run side by side with each other."""
    import threading
    import time

    from engines.cuda_graphs import CaptureGate

    gate = CaptureGate()
    order: list[str] = []
    waiting = threading.Event()

    def device_work() -> None:
        waiting.set()
        with gate.apart():
            order.append("device work")

    with gate.capturing() as first, gate.capturing() as second:
        assert first and second
        worker = threading.Thread(target=device_work, daemon=True)
        worker.start()
        assert waiting.wait(10)
        deadline = time.monotonic() + 10
        while True:  # once it waits for the captures under way, it holds new ones back
            with gate.capturing() as third:
                if not third:
                    break
            assert time.monotonic() < deadline, "the device work never began to wait"
        assert worker.is_alive() and order == []
        order.append("captures ended")
    worker.join(10)
    assert order == ["captures ended", "device work"] and gate.postponed == 1

    with gate.apart(), gate.capturing() as during:
        assert not during
    with gate.capturing() as after:
        assert after
    assert gate.postponed == 2

    with gate.capturing() as allowed, pytest.raises(RuntimeError, match="inside a CUDA graph capture"):
        assert allowed
        with gate.apart():  # from the capturing thread itself: it would wait for itself
            pass

    gate.enabled = False
    with gate.apart(), gate.capturing() as unguarded:
        assert unguarded


def test_regions_come_to_the_host_as_contiguous_copies_and_a_rectangle_outside_is_refused() -> None:
    from engines.arrays import regions_to_host

    frame = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    chips = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    out = regions_to_host([(frame, 1, 4, 2, 7), (chips[1], 0, 4, 0, 4), (frame, 5, 6, 7, 8)])
    assert [o.shape for o in out] == [(3, 5, 3), (4, 4, 3), (1, 1, 3)]
    assert np.array_equal(out[0], frame[1:4, 2:7]) and np.array_equal(out[1], chips[1])
    assert np.array_equal(out[2], frame[5:6, 7:8])
    assert all(o.flags.c_contiguous for o in out)
    out[0][:] = 0  # copies, also of a whole image: the frame and the chips keep their pixels
    out[1][:] = 0
    assert frame[1, 2, 0] != 0 and chips[1].any()
    assert regions_to_host([]) == []
    with pytest.raises(ValueError, match="not inside"):
        regions_to_host([(frame, 4, 7, 0, 2)])
