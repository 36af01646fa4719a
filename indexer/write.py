"""Writing a video's results: Parquet parts and thumbnails, never half-written.

Outputs live under a root that is a local folder or an object-store URI (pyarrow filesystems). On a
local disk every file is written under a temporary name and renamed. On an object store an object is
visible once its upload completes, and pyarrow's output stream completes a multipart upload on close
even after a failed write (so a `with` block would publish half a file): a small file goes up as one
PUT of the whole buffer, a larger one to a staging key that is copied into place (a server-side copy is
atomic) once it is whole. A failed write removes what it wrote, so a failed video leaves no part.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engines.sources import write_atomic
from indexer.errors import VideoError
from indexer.pipeline import VideoResult
from indexer.storage import filesystem, is_uri, reason
from schemas.errors import VidxError
from schemas.retry import RetryPolicy, call_with_retries
from schemas.tables import TABLES, file_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")
IO_RETRIES = 3
SINGLE_PUT_BYTES = 5 << 20
"""Objects up to this size are written with one PUT (below pyarrow's 10 MiB part size, where it makes one)."""
STAGING = "_staging"
"""Where larger objects are uploaded before being copied into place; `_` keeps dataset readers out of it."""


class OutputError(VidxError):
    """The output location cannot be written (disk full, permissions, unreachable store)."""


def part_name(table: str, video_id: int, run_key: str) -> str:
    return f"{table}/video-{video_id:08d}.run-{run_key}.parquet"


@dataclass
class OutputStore:
    """The root that Parquet parts and thumbnails are written under."""

    uri: str
    fs: pafs.FileSystem = field(init=False)
    root: str = field(init=False)

    def __post_init__(self) -> None:
        if is_uri(self.uri):
            self.fs, self.root = filesystem(self.uri)
        elif "://" in self.uri:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(self.uri))
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        if self.is_local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(final), data)
        elif len(data) <= SINGLE_PUT_BYTES:
            self._put(final, data)
        else:
            staged = self.path(f"{STAGING}/{uuid.uuid4().hex}-{rel.rsplit('/', 1)[-1]}")
            try:
                self._put(staged, data)
                size = self.fs.get_file_info(staged).size
                if size != len(data):  # never copy a short upload into place
                    raise OSError(f"the staged upload holds {size} of {len(data)} bytes")
                self.fs.copy_file(staged, final)
            finally:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(staged)

    def _put(self, key: str, data: bytes) -> None:
        """One object from a whole buffer; closed (which completes the upload) only once all of it was written."""
        stream = self.fs.open_output_stream(key)
        stream.write(data)
        stream.close()

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return bytes(f.read())

    def check(self) -> None:
        """Fail early, naming the URI and the reason, when an object-store root cannot be reached."""
        if self.is_local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
            if info.type == pafs.FileType.NotFound:
                raise OSError("NO_SUCH_BUCKET: the bucket does not exist")
            self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError as exc:
            raise OutputError(f"cannot use the output location: {reason(exc)}", path=self.uri,
                              hint="the credentials in use need to list, read and write there") from exc

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self.path(rel))

    def exists(self, rel: str) -> bool:
        return bool(self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound)


def with_retries(what: str, fn: Callable[[], T]) -> T:
    """Retry transient I/O errors with backoff; a full disk or a permission error is not transient."""

    def failed(exc: BaseException) -> OutputError:
        return OutputError(f"cannot write {what}: {getattr(exc, 'strerror', None) or reason(exc)}",
                           hint="free space or fix permissions, then resume the job")

    try:
        return call_with_retries(
            fn, RetryPolicy(attempts=IO_RETRIES, first_delay_s=0.5), errors=(OSError,),
            transient=lambda exc: getattr(exc, "errno", None) not in (28, 13, 30),  # ENOSPC, EACCES, EROFS
            give_up=lambda last: failed(last.error),
            on_retry=lambda exc, _: log.warning("writing %s failed (%s); retrying", what, exc))
    except OSError as exc:  # not transient
        raise failed(exc) from exc


def parquet_bytes(table: pa.Table, metadata: dict[bytes, bytes]) -> bytes:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_video_outputs(store: OutputStore, result: VideoResult, *, video_id: int, run_key: str,
                        pipeline_version: str, model_versions: dict[str, str], params: dict[str, object],
                        fingerprint: str) -> list[str]:
    """Write the four parts and the thumbnails; returns what was written (relative paths)."""
    if result.tracks.num_rows and result.tracks.column("video_id")[0].as_py() != video_id:
        raise VideoError("internal error: result belongs to another video", path=result.info.path)
    meta = file_metadata(pipeline_version=pipeline_version, model_versions=model_versions, run_key=run_key,
                         video_path=result.info.path, video_fingerprint=fingerprint, params=params)
    written: list[str] = []
    try:
        for rel, data in thumbnail_files(result):
            with_retries(rel, functools.partial(store.write_bytes, rel, data))
            written.append(rel)
        for table_name, table in (("faces", result.faces), ("persons", result.persons), ("tracks", result.tracks),
                                  ("person_tracks", result.person_tracks)):
            rel = part_name(table_name, video_id, run_key)
            data = parquet_bytes(table, meta)
            with_retries(rel, functools.partial(store.write_bytes, rel, data))
            written.append(rel)
    except BaseException:
        for rel in written:
            store.delete(rel)
        raise
    return written


def thumbnail_files(result: VideoResult) -> list[tuple[str, bytes]]:
    paths: dict[str, str] = {}
    for table, key in ((result.tracks, "track_id"), (result.person_tracks, "person_track_id")):
        paths.update(zip(table.column(key).to_pylist(), table.column("thumbnail").to_pylist(), strict=True))
    return [(paths[tid], data) for tid, data in sorted(result.thumbnails.items()) if tid in paths]


def remove_video_outputs(store: OutputStore, video_id: int, run_key: str, thumbnails: list[str]) -> None:
    """Remove a superseded run's files of one video (after the index points at the new run)."""
    for table in TABLES:
        store.delete(part_name(table, video_id, run_key))
    for rel in thumbnails:
        store.delete(rel)
