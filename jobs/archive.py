"""Finding the videos of an archive, and fingerprinting them cheaply but by content."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import InputError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
    ".3gp", ".ogv", ".hevc", ".h264", ".264", ".265",
})
SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class VideoFile:
    path: Path
    size: int
    mtime: float


def fingerprint(path: Path, size: int) -> str:
    """sha256 over the size and three 1 MiB samples (start, middle, end): content-based, O(1) in file size.

    A full hash of a multi-GB file costs more than indexing it; a rewrite that keeps the size and all
    three samples is not detected (the mtime check in `jobs.catalog` catches ordinary edits too).
    """
    h = hashlib.sha256(f"vidx-fp1:{size}:".encode())
    with path.open("rb") as f:
        if size <= 3 * SAMPLE_BYTES:
            h.update(f.read())
        else:
            for offset in (0, size // 2 - SAMPLE_BYTES // 2, size - SAMPLE_BYTES):
                f.seek(offset)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def scan_archive(archive: Path, *, follow_symlinks: bool = False) -> tuple[list[VideoFile], list[tuple[Path, str]]]:
    """Video files under a folder (recursively) or listed in a text file, and the entries skipped with why.

    Symlinks are followed only inside the archive unless `follow_symlinks`; loops are never followed.
    What is skipped and why: broken links and loops, links out of the archive, entries that are not
    regular files (a FIFO would block a reader forever), files this user cannot read.
    """
    archive = archive.expanduser()
    if not archive.exists():
        raise InputError("no such archive folder or list file", path=archive)
    if archive.is_file() and archive.suffix.lower() not in VIDEO_EXTENSIONS:
        candidates = list(_listed(archive))
        root = None
    elif archive.is_file():
        candidates, root = [archive], None
    else:
        root = archive.resolve()
        candidates = list(_walk(root))
    found: dict[Path, VideoFile] = {}
    skipped: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            skipped.append((path, f"cannot resolve ({exc.__class__.__name__}: broken link or loop)"))
            continue
        if root is not None and not follow_symlinks and not real.is_relative_to(root):
            skipped.append((path, f"symlink points outside the archive (to {real}); not followed"))
            continue
        try:
            st = real.stat()
        except OSError as exc:
            skipped.append((path, f"cannot stat: {exc.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append((path, "not a regular file (a FIFO, device or socket)"))
            continue
        if not os.access(real, os.R_OK):
            skipped.append((path, "cannot read the file: permission denied"))
            continue
        found.setdefault(real, VideoFile(real, st.st_size, st.st_mtime))
    return sorted(found.values(), key=lambda v: str(v.path)), skipped


def _walk(root: Path) -> Iterator[Path]:
    """Video files by name, plus symlinked folders (never descended: scan_archive reports where they point)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        yield from (Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink())
        for name in sorted(filenames):
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                yield Path(dirpath) / name


def _listed(list_file: Path) -> Iterator[Path]:
    base = list_file.parent
    for line in list_file.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            yield p if p.is_absolute() else base / p
