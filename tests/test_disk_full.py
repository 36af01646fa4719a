"""A full output disk: a clear error, no partial files, and the videos are indexed once space is freed.

The disk is real: a small tmpfs mounted for the test (needs root with the right to mount; elsewhere
the tests skip and say so).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import badfiles  # tests/badfiles.py
import pytest
from sqlalchemy import func, select

from catalog.db import Catalog
from jobs.runner import LocalExecutor, run_job
from schemas.config import IndexSettings, RuntimeConfig
from schemas.sql import Video
from schemas.tables import TABLES


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root and CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk is full; deleting it frees the space again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_full_output_disk_fails_clearly_leaves_nothing_and_resumes(small_disk: Path, tmp_path: Path,
                                                                      cache_dir: Path) -> None:
    from jobs.runner import PlanOptions

    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(3):
        badfiles.write_video(archive / f"v{i}.mp4", seed=i)
    out = small_disk / "out"
    out.mkdir()
    filler = fill(small_disk)
    catalog = Catalog(f"sqlite:///{tmp_path / 'index.sqlite'}")  # the index on another disk: only outputs fail
    settings = IndexSettings(runtime=RuntimeConfig(device="cpu"))

    first = run_job(archive, catalog=catalog, out_uri=str(out), settings=settings, executor=LocalExecutor(),
                    cache_dir=cache_dir)
    s = first.summary
    assert s.done == 0 and s.failed == 3, s
    for failure in s.failures:
        assert "No space left on device" in failure["error"], failure
    assert files_under(out) == []  # no part, no thumbnail, no temporary file

    filler.unlink()  # space freed
    second = run_job(archive, catalog=catalog, out_uri=str(out), settings=settings, executor=LocalExecutor(),
                     cache_dir=cache_dir, options=PlanOptions(retry_failed=True))
    assert second.summary.done == 3 and second.summary.failed == 0, second.summary
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(Video).where(Video.status == "indexed")) == 3
    assert len([p for p in files_under(out) if p.suffix == ".parquet"]) == 3 * len(TABLES)
    catalog.close()


def test_a_full_disk_under_the_sqlite_index_is_a_clear_error(small_disk: Path, tmp_path: Path) -> None:
    from catalog.archive import VideoFile
    from catalog.db import IndexError_

    catalog = Catalog(f"sqlite:///{small_disk / 'index.sqlite'}", retry_s=1)
    video = tmp_path / "v.mp4"
    video.write_bytes(os.urandom(100))
    filler = fill(small_disk)
    many = []
    for i in range(2000):  # enough rows to need new pages on the full disk
        p = tmp_path / f"v{i}.mp4"
        p.write_bytes(b"x")
        many.append(VideoFile(p, 1, float(i)))
    with pytest.raises(IndexError_) as err:
        catalog.register(many)
    assert "full" in err.value.message, err.value.message
    filler.unlink()
    assert len(catalog.register(many)) == 2000  # after freeing space the same call goes through
    catalog.close()
