"""Shared fixtures: the real models and real photos (downloaded once into the vidx cache), markers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engines.arrays import cupy_module
from engines.loader import Engines, load_engines
from engines.photos import load_photo
from engines.zoo import ModelStore
from jobs.catalog import Catalog, default_db_url
from jobs.runner import JobResult, LocalExecutor, run_job
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig
from vidx.sample_archive import SampleVideo, build_sample_archive

REQUIRE_GPU = os.environ.get("VIDX_REQUIRE_GPU") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """GPU tests skip without a GPU, except on a GPU run (VIDX_REQUIRE_GPU=1), where that is a failure."""
    if "gpu" in item.keywords and cupy_module() is None:
        if REQUIRE_GPU:
            pytest.fail("VIDX_REQUIRE_GPU=1 but no GPU is usable (CuPy missing or no CUDA device)")
        pytest.skip("needs an NVIDIA GPU with CuPy (VIDX_REQUIRE_GPU=1 makes this a failure on GPU runners)")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The user's vidx cache (VIDX_CACHE_DIR or ~/.cache/vidx): models and photos are fetched once."""
    from engines.sources import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def store(cache_dir: Path) -> ModelStore:
    return ModelStore(cache_dir)


@pytest.fixture(scope="session")
def engines(store: ModelStore) -> Engines:
    return load_engines(DetectionConfig(), RuntimeConfig(device="cpu"), store=store, warm_up=False)


@pytest.fixture(scope="session")
def photos(cache_dir: Path) -> dict[str, np.ndarray]:
    return {name: load_photo(name, cache_dir) for name in ("obama", "obama2", "obama3", "biden", "astronaut", "t1")}


@pytest.fixture(scope="session")
def indexed(tmp_path_factory: pytest.TempPathFactory,
            cache_dir: Path) -> tuple[list[SampleVideo], Path, Catalog, JobResult]:
    """The test preset of the sample archive plus one broken file, indexed once on the CPU for the session."""
    root = tmp_path_factory.mktemp("indexed")
    photos = {n: load_photo(n, cache_dir) for n in ("obama", "obama3", "biden", "astronaut", "t1")}
    videos = build_sample_archive(root / "archive", photos, preset="test")
    (root / "archive" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    out = root / "out"
    catalog = Catalog(default_db_url(out))
    settings = IndexSettings(runtime=RuntimeConfig(device="cpu"))
    result = run_job(root / "archive", catalog=catalog, out_uri=str(out), settings=settings,
                     executor=LocalExecutor(), cache_dir=cache_dir)
    return videos, out, catalog, result
