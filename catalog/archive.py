"""Finding the videos of an archive, and fingerprinting them cheaply but by content.

An archive is a local folder, a list file, or an object-store prefix (s3://bucket/prefix, gs://...); a list
file may name local paths and object URIs alike. Objects are fingerprinted from their size and ETag (one
HEAD request each), never by downloading them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.storage import (
    ObjectInfo,
    StorageError,
    filesystem,
    is_uri,
    list_objects,
    object_fingerprint,
    object_version,
    reason,
    stat_object,
)
from schemas.errors import InputError, VidxError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
    ".3gp", ".ogv", ".hevc", ".h264", ".264", ".265",
})
SAMPLE_BYTES = 1 << 20
LIST_FILE_MAX = 64 << 20


@dataclass(frozen=True)
class VideoFile:
    path: Path | str
    """A local path, or an object's URI (a str)."""
    size: int
    mtime: float


def is_video_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return Path(base).suffix.lower() in VIDEO_EXTENSIONS and not base.startswith(".")


def video_fingerprint(f: VideoFile) -> str:
    """The fingerprint of a local file (sampled content) or of an object (size + ETag)."""
    if isinstance(f.path, str) and is_uri(f.path):
        try:
            size, tag = object_version(f.path)
        except VidxError:  # gone or unreadable since it was listed: its task fails with the reason when it runs
            size, tag = f.size, f"listed-mtime:{f.mtime}"
        return object_fingerprint(size, tag)
    return fingerprint(Path(f.path), f.size)


def fingerprint(path: Path, size: int) -> str:
    """sha256 over the size and three 1 MiB samples (start, middle, end): content-based, O(1) in file size.

    A full hash of a multi-GB file costs more than indexing it; a rewrite that keeps the size and all
    three samples is not detected (the mtime check in `catalog.db` catches ordinary edits too).
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


Skipped = list[tuple[Path | str, str]]


def scan_archive(archive: Path | str, *, follow_symlinks: bool = False) -> tuple[list[VideoFile], Skipped]:
    """Video files under a folder (recursively) or listed in a text file, and the entries skipped with why.

    Symlinks are followed only inside the archive unless `follow_symlinks`; loops are never followed.
    What is skipped and why: broken links and loops, links out of the archive, entries that are not
    regular files (a FIFO would block a reader forever), files this user cannot read.
    """
    if isinstance(archive, str) and is_uri(archive):
        return scan_objects(archive)
    archive = Path(archive).expanduser()
    if not archive.exists():
        raise InputError("no such archive folder or list file", path=archive)
    remote: list[str] = []
    if archive.is_file() and archive.suffix.lower() not in VIDEO_EXTENSIONS:
        candidates: list[Path] = []
        for entry in _listed(archive):
            if isinstance(entry, str):
                remote.append(entry)
            else:
                candidates.append(entry)
        root = None
    elif archive.is_file():
        candidates, root = [archive], None
    else:
        root = archive.resolve()
        candidates = list(_walk(root))
    found: dict[Path, VideoFile] = {}
    skipped: Skipped = []
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
    objects = listed_objects(remote, skipped)
    return sorted([*found.values(), *objects], key=lambda v: str(v.path)), skipped


def scan_objects(prefix: str) -> tuple[list[VideoFile], Skipped]:
    """The videos under an object-store prefix (recursively, by extension as in a folder), or the one it names."""
    infos = list_objects(prefix)
    if len(infos) == 1 and infos[0].uri == prefix and not is_video_name(prefix):  # a list file in the store
        skipped: Skipped = []
        return sorted(listed_objects(list(_listed_object(prefix)), skipped), key=lambda v: str(v.path)), skipped
    videos = [_video(i) for i in infos if is_video_name(i.uri) or i.uri == prefix]
    return sorted(videos, key=lambda v: str(v.path)), []


def _listed_object(list_uri: str) -> Iterator[str]:
    fs, path = filesystem(list_uri)
    try:
        with fs.open_input_stream(path) as f:
            text = f.read(LIST_FILE_MAX + 1).decode(errors="replace")
    except OSError as exc:
        raise StorageError(f"cannot read the list file: {reason(exc)}", path=list_uri) from exc
    if len(text) > LIST_FILE_MAX:
        raise InputError(f"a list file larger than {LIST_FILE_MAX} bytes: is it a video with another extension?",
                         path=list_uri)
    base = list_uri.rsplit("/", 1)[0]
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line if is_uri(line) else f"{base}/{line.lstrip('/')}"


def listed_objects(uris: list[str], skipped: Skipped) -> list[VideoFile]:
    """The objects a list file names (one HEAD each); a missing or unreadable one is skipped with why."""
    out: dict[str, VideoFile] = {}
    for uri in uris:
        try:
            out.setdefault(uri, _video(stat_object(uri)))
        except FileNotFoundError:
            skipped.append((uri, "no such object"))
        except (OSError, VidxError) as exc:
            skipped.append((uri, f"cannot read the object: {getattr(exc, 'message', None) or reason(exc)}"))
    return list(out.values())


def _video(info: ObjectInfo) -> VideoFile:
    return VideoFile(info.uri, info.size, info.mtime)


def _walk(root: Path) -> Iterator[Path]:
    """Video files by name, plus symlinked folders (never descended: scan_archive reports where they point)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        yield from (Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink())
        for name in sorted(filenames):
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                yield Path(dirpath) / name


def _listed(list_file: Path) -> Iterator[Path | str]:
    base = list_file.parent
    for line in list_file.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if is_uri(line):
                yield line
                continue
            p = Path(line).expanduser()
            yield p if p.is_absolute() else base / p
