"""Open the three models once, on the best runtime, and warm them up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from engines.detectors import FaceDetector, PersonDetector
from engines.embedder import CHIP_SIZE, FaceEmbedder, padded_batch
from engines.runtime.base import RuntimeReport, Session, open_session, runtime_report, session_array_module
from engines.sources import Progress
from engines.zoo import ModelStore
from schemas.config import DetectionConfig, RuntimeConfig

log = logging.getLogger(__name__)

GPU_DETECTOR_BATCH = 32
"""Frames per detector run on a GPU (one pyramid level of each): a whole analysis step of frames."""
CPU_DETECTOR_BATCH = 4
"""Frames per detector run on a CPU: the finest level of a 1080p frame costs the same per frame at 1 and 4
frames per run, the small coarse levels run ~1.4x faster per frame at 4."""


@dataclass
class Engines:
    """The models a worker needs, opened on one device."""

    faces: FaceDetector
    persons: PersonDetector | None
    embedder: FaceEmbedder
    model_versions: dict[str, str]
    sessions: dict[str, Session]

    @property
    def device(self) -> str:
        return self.embedder.session.device

    def describe(self) -> dict[str, str]:
        return {name: s.description for name, s in self.sessions.items()}

    def warm_up(self) -> float:
        """Run each model once: the first run allocates memory and picks kernels (TensorRT, cuDNN)."""
        started = time.monotonic()
        xp = session_array_module(self.embedder.session)
        rng = np.random.default_rng(0)
        # On a GPU, a 1080p frame: the detectors' input shape for the most common video size is set up here
        # (ONNX Runtime's CUDA provider takes seconds per new shape), not in the first analysis step.
        shape = (360, 640, 3) if xp is np else (1080, 1920, 3)
        frame = xp.asarray(rng.integers(0, 255, shape, dtype=np.uint8))
        self.faces.detect([frame])
        if self.persons is not None:
            self.persons.detect([frame])
        sizes = [2] if xp is np else sorted({padded_batch(n, self.embedder.batch_size)
                                             for n in range(1, self.embedder.batch_size + 1)})
        for n in sizes:  # on a GPU, every padded batch size once: later batches find their kernels ready
            self.embedder.embed_chips(xp.asarray(rng.integers(0, 255, (n, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)))
        return time.monotonic() - started


def load_engines(
    detection: DetectionConfig | None = None,
    runtime: RuntimeConfig | None = None,
    *,
    store: ModelStore | None = None,
    progress: Progress | None = None,
    report: RuntimeReport | None = None,
    warm_up: bool = True,
) -> Engines:
    detection = detection or DetectionConfig()
    runtime = runtime or RuntimeConfig()
    store = store or ModelStore(progress=progress)
    report = report or runtime_report()
    names = ["face_detector", "face_embedder"] + (["person_detector"] if detection.detect_persons else [])
    sessions: dict[str, Session] = {}
    versions: dict[str, str] = {}
    for name in names:
        model = store.load(name)  # type: ignore[arg-type]
        versions[name] = model.provenance.version
        batch = runtime.embedder_batch if name == "face_embedder" else runtime.detector_batch or GPU_DETECTOR_BATCH
        sessions[name] = open_session(model, device=runtime.device, engine=runtime.engine, max_batch=batch,
                                      report=report)
        log.info("%s: %s", name, sessions[name].description)
    on_gpu = sessions["face_detector"].device == "cuda"
    frames = runtime.detector_batch or (GPU_DETECTOR_BATCH if on_gpu else CPU_DETECTOR_BATCH)
    engines = Engines(
        faces=FaceDetector(sessions["face_detector"], score_threshold=detection.face_score,
                           min_face_px=detection.min_face_px, batch_size=frames),
        persons=PersonDetector(sessions["person_detector"], score_threshold=detection.person_score,
                               batch_size=frames)
        if "person_detector" in sessions else None,
        embedder=FaceEmbedder(sessions["face_embedder"], batch_size=runtime.embedder_batch),
        model_versions=versions,
        sessions=sessions,
    )
    if warm_up:
        seconds = engines.warm_up()
        log.info("engines warmed up in %.2f s (first runs allocate memory and choose kernels)", seconds)
    return engines
