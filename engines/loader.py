"""Open the three models once, on the best runtime, and warm them up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from engines.arrays import padded_batch, require_cupy
from engines.centerface import CenterFaceDetector
from engines.detectors import FaceDetector, PersonDetector
from engines.embedder import CHIP_SIZE, FaceEmbedder
from engines.runtime.base import (
    RuntimeReport,
    Session,
    open_session,
    resolve_device,
    runtime_report,
    session_array_module,
)
from engines.sources import Progress
from engines.streams import side_by_side
from engines.zoo import FACE_DETECTOR_MODELS, ModelStore
from schemas.config import DetectionConfig, RuntimeConfig, SamplingMode

log = logging.getLogger(__name__)

GPU_DETECTOR_BATCH = 32
"""Frames per detector run on a GPU (one pyramid level of each), and so per analysis step, when frames are sampled
(the default 2 fps, key frames), and on a GPU of less than LARGE_GPU_GIB whatever the sampling."""
EVERY_FRAME_GPU_BATCH = 64
"""Frames per detector run and per step when every frame is analysed on a GPU of LARGE_GPU_GIB or more. On an H100
one process analysed 9-16% more frames per second at 64 than at 32, with the same faces, and held 17.2 GiB of GPU
memory against 11.6. At sampled rates 64 did not pay: two worker processes on one H100 indexed 151 video-s/s of
H.264 at 2 fps with 64 against 184 with 32, the same tracks (docs/performance.md, "Videos in flight and frames per
step")."""
LARGE_GPU_GIB = 48.0
"""GPU memory from which every-frame runs take EVERY_FRAME_GPU_BATCH: two worker processes at 64 hold ~34 GiB."""
CPU_DETECTOR_BATCH = 4
"""Frames per detector run on a CPU: the finest level of a 1080p frame costs the same per frame at 1 and 4
frames per run, the small coarse levels run ~1.4x faster per frame at 4."""


@dataclass
class Engines:
    """The models a worker needs, opened on one device."""

    faces: FaceDetector | CenterFaceDetector
    persons: PersonDetector | None
    embedder: FaceEmbedder
    model_versions: dict[str, str]
    sessions: dict[str, Session]

    @property
    def device(self) -> str:
        return self.embedder.session.device

    def describe(self) -> dict[str, str]:
        return {name: s.description for name, s in self.sessions.items()}

    def shapes_taken_over(self) -> int:
        """Input shapes whose fastest session has taken over from a quick one (RuntimeConfig.engine_start
        background), over all models."""
        return sum(counts["taken_over"] for counts in self.shape_sessions().values())

    def shape_sessions(self) -> dict[str, dict[str, int]]:
        """Per model on CUDA, its per-shape sessions: held now, evicted so far (set up again if met again) and
        taken over by the fastest session (engine start background); empty elsewhere."""
        out = {}
        for name, s in self.sessions.items():
            held = getattr(s, "shapes_set_up", lambda: None)()
            if held is not None:
                out[name] = {"held": len(held), "evicted": getattr(s, "shapes_evicted", lambda: 0)(),
                             "taken_over": len(getattr(s, "shapes_taken_over", dict)())}
        return out

    def cuda_graph_shapes(self) -> dict[str, dict[str, int]]:
        """Per model on CUDA: of its input shapes held, how many replay a recorded CUDA graph and how many could
        not be recorded (engines/cuda_graphs.py); empty elsewhere."""
        counts = {name: getattr(s, "cuda_graph_shapes", lambda: None)() for name, s in self.sessions.items()
                  if s.device == "cuda"}
        return {name: {"recorded": c[0], "refused": c[1]} for name, c in counts.items() if c is not None}

    def warm_up(self, height: int = 1080, width: int = 1920) -> float:
        """Run each model once: the first run allocates memory and picks kernels (TensorRT, cuDNN).

        On a GPU every input shape a height x width video needs (each pyramid level of both detectors, each
        padded embedder batch size) is set up here, not in the first analysis steps: ONNX Runtime's CUDA
        provider spends seconds per shape finalising cuDNN plans, 5-10 s for each of the face detector's
        (docs/performance.md, "Known to be slow"). The shapes are set up side by side, one thread each, which
        overlapped them once (49 s one after another, 41 s side by side) but no longer does with the current
        libraries (H100: 33.5 against 33.7 s)."""
        started = time.monotonic()
        xp = session_array_module(self.embedder.session)
        rng = np.random.default_rng(0)
        if xp is np:
            frame = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
            self.faces.detect([frame])
            if self.persons is not None:
                self.persons.detect([frame])
            self.embedder.embed_chips(rng.integers(0, 255, (2, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8))
            return time.monotonic() - started
        runs: list[Callable[[], object]] = [partial(d.prepare, height, width) for d in (self.faces, self.persons)
                                            if d is not None]
        for n in sorted({padded_batch(n, self.embedder.batch_size) for n in range(1, self.embedder.batch_size + 1)}):
            runs.append(partial(self.embedder.embed_chips, xp.zeros((n, CHIP_SIZE, CHIP_SIZE, 3), xp.uint8)))
        side_by_side(runs, "vidx-warm-up")
        # Then the whole path once (the pre- and post-processing kernels compile on first use).
        frame = xp.asarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        self.faces.detect([frame])
        if self.persons is not None:
            self.persons.detect([frame])
        return time.monotonic() - started


def detector_batch_for(gpu_memory_gib: float, sampling_mode: SamplingMode = "fps") -> int:
    """Frames per detector run on a GPU with this much memory for this sampling: EVERY_FRAME_GPU_BATCH when every
    frame is analysed on a GPU of LARGE_GPU_GIB or more, else GPU_DETECTOR_BATCH."""
    if sampling_mode == "every-frame" and gpu_memory_gib >= LARGE_GPU_GIB:
        return EVERY_FRAME_GPU_BATCH
    return GPU_DETECTOR_BATCH


def gpu_detector_batch(sampling_mode: SamplingMode = "fps", *, requested: int = 0) -> int:
    """Frames per detector run on this process's current GPU: `requested` (RuntimeConfig.detector_batch) when set,
    else detector_batch_for its memory and the sampling. The GPU is asked for its memory (which makes a CUDA
    context) only when every frame is analysed."""
    if requested:
        return requested
    if sampling_mode != "every-frame":
        return GPU_DETECTOR_BATCH
    cp = require_cupy()
    return detector_batch_for(cp.cuda.Device().mem_info[1] / 2**30, sampling_mode)


def load_engines(
    detection: DetectionConfig | None = None,
    runtime: RuntimeConfig | None = None,
    *,
    store: ModelStore | None = None,
    progress: Progress | None = None,
    report: RuntimeReport | None = None,
    warm_up: bool = True,
    cpu_threads: int = 0,
    sampling_mode: SamplingMode = "fps",
) -> Engines:
    """The models of `detection` on the runtime and device of `runtime`. `cpu_threads`: each CPU session's
    threads per run (0: its share of the cores, as the pipeline runs two steps at once; a caller that runs one
    model at a time gives every core). `sampling_mode`: the sampling the engines will analyse, which sets the
    frames per detector run on a GPU unless `runtime.detector_batch` does (detector_batch_for)."""
    detection = detection or DetectionConfig()
    runtime = runtime or RuntimeConfig()
    store = store or ModelStore(progress=progress)
    report = report or runtime_report()
    face_model = FACE_DETECTOR_MODELS[detection.face_detector]
    names = [face_model, "face_embedder"] + (["person_detector"] if detection.detect_persons else [])
    sessions: dict[str, Session] = {}
    versions: dict[str, str] = {}
    on_cuda = resolve_device(runtime.device, report) == "cuda"
    gpu_batch = (gpu_detector_batch(sampling_mode, requested=runtime.detector_batch) if on_cuda
                 else runtime.detector_batch or GPU_DETECTOR_BATCH)
    for name in names:
        model = store.load(name)
        versions[name] = model.provenance.version
        batch = runtime.embedder_batch if name == "face_embedder" else gpu_batch
        sessions[name] = open_session(model, device=runtime.device, engine=runtime.engine, max_batch=batch,
                                      report=report, start=runtime.engine_start, threads=cpu_threads)
        log.info("%s: %s", name, sessions[name].description)
    on_gpu = sessions[face_model].device == "cuda"
    frames = gpu_batch if on_gpu else runtime.detector_batch or CPU_DETECTOR_BATCH
    faces: FaceDetector | CenterFaceDetector
    if detection.face_detector == "centerface":
        faces = CenterFaceDetector(sessions[face_model], score_threshold=detection.centerface_score,
                                   min_face_px=detection.min_face_px, batch_size=frames)
    else:
        faces = FaceDetector(sessions[face_model], score_threshold=detection.face_score,
                             min_face_px=detection.min_face_px, batch_size=frames,
                             fine_tiles=detection.face_search == "guided")
    engines = Engines(
        faces=faces,
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
