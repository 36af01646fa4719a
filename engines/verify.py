"""`vidx models verify`: the files match their records, and the models still see faces correctly.

The numeric check runs the models on real photos and compares with what the reference
conversion measured (../shared/reference/models/README.md): six faces in t1.jpg, one in each
portrait, the same person closer than 0.6 in L2 and different people farther; at least five of the six
people in t1.jpg and of the six pedestrians in a frame of vtest.avi.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from engines.centerface import CenterFaceDetector
from engines.detectors import FaceDetector
from engines.errors import ModelError
from engines.loader import Engines, load_engines
from engines.photos import IDENTITY, PORTRAITS, load_photo, video_path
from engines.runtime.base import open_session
from engines.sources import check_sha256
from engines.zoo import FACE_DETECTOR_MODELS, MODEL_NAMES, ModelStore, spec_of
from schemas.config import DetectionConfig, RuntimeConfig


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def largest_face_embedding(engines: Engines, image: np.ndarray) -> tuple[int, np.ndarray | None]:
    dets = engines.faces.detect([image])[0]
    if not len(dets):
        return 0, None
    areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
    k = int(np.argmax(areas))
    emb, _ = engines.embedder.embed([image], [0], dets.keypoints[k:k + 1])
    return len(dets), emb[0]


def verify_models(store: ModelStore, runtime: RuntimeConfig | None = None) -> VerifyReport:
    report = VerifyReport()
    for name in MODEL_NAMES:
        spec = spec_of(name)
        try:
            model = store.load(name)
            for source in (spec.source, *spec.extra_sources):
                check_sha256(store.cache_dir / "sources" / source.cache_name, source.sha256)
            report.add(f"{name} files", True, f"source and ONNX sha256 match ({model.provenance.version})")
        except ModelError as exc:
            report.add(f"{name} files", False, exc.describe())
    if not report.ok:
        return report
    engines = load_engines(DetectionConfig(), runtime or RuntimeConfig(), store=store, progress=store.progress,
                           warm_up=False)
    t1 = load_photo("t1", store.cache_dir)
    n_t1 = len(engines.faces.detect([t1])[0])
    report.add("faces in t1.jpg", n_t1 == 6, f"{n_t1} of 6 found")
    embeddings: dict[str, np.ndarray] = {}
    for photo in PORTRAITS:
        n, emb = largest_face_embedding(engines, load_photo(photo, store.cache_dir))
        report.add(f"faces in {photo}", n == 1, f"{n} found, 1 expected")
        if emb is not None:
            embeddings[photo] = emb
    worst_same, best_other = 0.0, 9.0
    for a, b in itertools.combinations(sorted(embeddings), 2):
        d = float(np.linalg.norm(embeddings[a] - embeddings[b]))
        if IDENTITY[a] == IDENTITY[b]:
            worst_same = max(worst_same, d)
        else:
            best_other = min(best_other, d)
    report.add("same person L2 < 0.6", worst_same < 0.6, f"largest same-person distance {worst_same:.3f}")
    report.add("different people L2 > 0.6", best_other > 0.6, f"smallest different-person distance {best_other:.3f}")
    n_persons = len(engines.persons.detect([t1])[0]) if engines.persons else 0
    report.add("people in t1.jpg", n_persons >= 5, f"{n_persons} of 6 found")
    frame = vtest_frame(store)
    n_street = len(engines.persons.detect([frame])[0]) if engines.persons else 0
    report.add(f"people in vtest.avi frame {VTEST_FRAME}", n_street >= 5,
               f"{n_street} found, {VTEST_PEOPLE} walking there (counted by eye)")
    _verify_other_face_detector(report, store, runtime or RuntimeConfig(), t1)
    return report


VTEST_FRAME = 600
VTEST_PEOPLE = 6


def vtest_frame(store: ModelStore) -> np.ndarray:
    """One frame of OpenCV's vtest.avi (768x576 surveillance footage) as RGB."""
    import av

    with av.open(str(video_path("vtest", store.cache_dir, store.progress))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == VTEST_FRAME:
                return frame.to_ndarray(format="rgb24")
    raise ModelError(f"vtest.avi has fewer than {VTEST_FRAME + 1} frames")


def _verify_other_face_detector(report: VerifyReport, store: ModelStore, runtime: RuntimeConfig,
                                t1: np.ndarray) -> None:
    """The face detector not chosen by default must see the same faces: six in t1.jpg, one per portrait."""
    default = DetectionConfig()
    choice = next(c for c in FACE_DETECTOR_MODELS if c != default.face_detector)
    name = FACE_DETECTOR_MODELS[choice]
    session = open_session(store.load(name), device=runtime.device, engine=runtime.engine)
    detector = (CenterFaceDetector(session, score_threshold=default.centerface_score) if choice == "centerface"
                else FaceDetector(session, score_threshold=default.face_score))
    n_t1 = len(detector.detect([t1])[0])
    report.add(f"{name}: faces in t1.jpg", n_t1 == 6, f"{n_t1} of 6 found")
    for photo in PORTRAITS:
        n = len(detector.detect([load_photo(photo, store.cache_dir)])[0])
        report.add(f"{name}: faces in {photo}", n == 1, f"{n} found, 1 expected")
