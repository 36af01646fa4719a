"""Shared fixtures: the real models and real photos (downloaded once into the vidx cache), markers."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from scheduling import restore, scheduling  # tests/scheduling.py

from catalog.db import Catalog, default_db_url
from engines.arrays import cupy_module
from engines.loader import Engines, load_engines
from engines.photos import load_photo
from engines.zoo import ModelStore
from jobs.runner import JobResult, LocalExecutor, run_job
from samples.archive import SampleVideo, build_sample_archive
from schemas.config import DetectionConfig, IndexSettings, RuntimeConfig

REQUIRE_GPU = os.environ.get("VIDX_REQUIRE_GPU") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """GPU tests skip without a GPU, except on a GPU run (VIDX_REQUIRE_GPU=1), where that is a failure."""
    if "gpu" in item.keywords and cupy_module() is None:
        if REQUIRE_GPU:
            pytest.fail("VIDX_REQUIRE_GPU=1 but no GPU is usable (CuPy missing or no CUDA device)")
        pytest.skip("needs an NVIDIA GPU with CuPy (VIDX_REQUIRE_GPU=1 makes this a failure on GPU runners)")


SESSION_SCHEDULING = scheduling()
"""The main thread's scheduling when the session started: every test starts and ends with it."""


@pytest.fixture(autouse=True)
def _scheduling_unchanged() -> Iterator[None]:
    """A test, and the fixtures set up for it, must leave the main thread's scheduling as the session began
    with it (tests/scheduling.py says why)."""
    _check_scheduling("a fixture set up for this test")
    yield
    _check_scheduling("the test")


def _check_scheduling(who: str) -> None:
    now = scheduling()
    if now != SESSION_SCHEDULING:
        restore(SESSION_SCHEDULING)
        pytest.fail(f"{who} changed this thread's scheduling (policy, priority) from {SESSION_SCHEDULING} to "
                    f"{now} (put back now)")


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


@pytest.fixture(scope="session")
def indexed_int8(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult],
                 tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Catalog:
    """The archive of `indexed` indexed again on the CPU with the person detector's INT8 copy
    (`--engine onnxruntime-int8`)."""
    out = tmp_path_factory.mktemp("indexed_int8") / "out"
    catalog = Catalog(default_db_url(out))
    run_job(Path(indexed[0][0].path).parent, catalog=catalog, out_uri=str(out),
            settings=IndexSettings(runtime=RuntimeConfig(device="cpu", engine="onnxruntime-int8")),
            executor=LocalExecutor(), cache_dir=cache_dir)
    return catalog


@pytest.fixture(scope="session")
def private_out(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult],
                tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Makes copies of the shared indexed output (without its search index, which a search rebuilds), so that
    labels, clusters and reindexing done in a copy leave the session's output alone."""

    def make(name: str) -> Path:
        copy = tmp_path_factory.mktemp(name) / "out"
        shutil.copytree(indexed[1], copy, ignore=shutil.ignore_patterns("search-index"))
        return copy

    return make


POSTGRES_URL = os.environ.get("VIDX_TEST_POSTGRES_URL")
"""A PostgreSQL server for the SQL tests (.ci/postgres starts one), e.g. postgresql+psycopg://vidx@/postgres?host=/tmp/s"""
REQUIRE_POSTGRES = os.environ.get("VIDX_REQUIRE_POSTGRES") == "1"
"""Set by .ci/postgres: a PostgreSQL test that cannot run (no server, no pgvector) fails instead of skipping."""
NO_POSTGRES = "set VIDX_TEST_POSTGRES_URL=postgresql+psycopg://... (.ci/postgres does) to run SQL tests on PostgreSQL"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip, except where CI requires PostgreSQL (VIDX_REQUIRE_POSTGRES=1), where that is a failure."""
    if REQUIRE_POSTGRES:
        pytest.fail(f"VIDX_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server (unique name), dropped afterwards: tests never share one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if not POSTGRES_URL:
        skip_or_fail(NO_POSTGRES)
    server = make_url(POSTGRES_URL)
    name = f"vidx_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # a generated identifier: DDL takes no parameters
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty SQL index URL: SQLite always, PostgreSQL (a fresh database per test) with VIDX_TEST_POSTGRES_URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for a test that is about PostgreSQL only (skips without a server)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def indexed_postgres(indexed: tuple[list[SampleVideo], Path, Catalog, JobResult],
                     tmp_path_factory: pytest.TempPathFactory,
                     cache_dir: Path) -> Iterator[tuple[list[SampleVideo], Path, Catalog, JobResult]]:
    """The archive of `indexed`, indexed again into a fresh PostgreSQL database (skips without a server)."""
    videos = indexed[0]
    with fresh_postgres_database() as url:
        out = tmp_path_factory.mktemp("indexed_pg") / "out"
        catalog = Catalog(url)
        result = run_job(Path(videos[0].path).parent, catalog=catalog, out_uri=str(out),
                         settings=IndexSettings(runtime=RuntimeConfig(device="cpu")), executor=LocalExecutor(),
                         cache_dir=cache_dir)
        yield videos, out, catalog, result
        catalog.close()
