"""Videos in object storage: each is copied to the bounded scratch folder in its own decoder thread, decoded
there like a local file, and removed; frames, errors and results name the object's URI."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from indexer.decode.base import Decoder, DecoderWrapper, FrameBatch, VideoInfo
from indexer.errors import VideoError
from indexer.storage import Scratch, download, object_fingerprint, object_version, scratch
from schemas.config import SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    uri: str
    fingerprint: str | None
    """What the job planned to index; a different object at that URI now fails instead of being indexed."""


class RemoteSources:
    """Which local scratch path stands for which object, shared by every copy of a StagedDecoder."""

    def __init__(self, space: Scratch | None = None):
        self._space = space
        self._by_path: dict[Path, Remote] = {}
        self._lock = threading.Lock()

    @property
    def space(self) -> Scratch:
        return self._space or scratch()

    def local_path(self, uri: str, key: int, fingerprint: str | None = None) -> Path:
        """The scratch path the pipeline is given for an object (it exists only while the video decodes)."""
        path = self.space.path_for(uri, key)
        with self._lock:
            self._by_path[path] = Remote(uri, fingerprint)
        return path

    def take(self, path: Path) -> Remote | None:
        with self._lock:
            return self._by_path.get(path)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._by_path.pop(path, None)


class StagedDecoder(DecoderWrapper):
    """Wraps a decoder: paths standing for objects are downloaded first (within the scratch budget)."""

    def __init__(self, inner: Decoder, sources: RemoteSources):
        super().__init__(inner)
        self.sources = sources
        self._info: dict[Path, VideoInfo] = {}

    def rewrap(self, inner: Decoder) -> StagedDecoder:
        return StagedDecoder(inner, self.sources)

    def probe(self, path: Path) -> VideoInfo:
        if (info := self._info.get(path)) is not None:
            return info
        remote = self.sources.take(path)
        if remote is None:
            return self.inner.probe(path)
        with self._staged(path, remote):
            return replace(self.inner.probe(path), path=remote.uri)

    def batches(self, path: Path, sampling: SamplingConfig, batch_size: int) -> Iterator[FrameBatch]:
        remote = self.sources.take(path)
        if remote is None:
            yield from self.inner.batches(path, sampling, batch_size)
            return
        try:
            with self._staged(path, remote):
                info = None
                for batch in self.inner.batches(path, sampling, batch_size):
                    info = replace(batch.video, path=remote.uri)
                    yield replace(batch, video=info)
                # Kept for a probe after the file is gone (a video that yielded no frame).
                self._info[path] = info or replace(self.inner.probe(path), path=remote.uri)
        finally:
            self.sources.forget(path)

    @contextlib.contextmanager
    def _staged(self, path: Path, remote: Remote) -> Iterator[None]:
        """The object downloaded to `path` for the length of a `with`; errors name the URI, not the scratch file."""
        uri = remote.uri
        size, tag = object_version(uri)
        if remote.fingerprint is not None and object_fingerprint(size, tag) != remote.fingerprint:
            raise VideoError("the object changed since the job was planned (another size or ETag); "
                             "a new job indexes the new version", path=uri)
        with self.sources.space.reserve(size, uri):
            try:
                download(uri, path)
                yield
            except VideoError as exc:
                if exc.path == str(path):
                    exc.path = uri
                    exc.args = (exc.describe(),)
                raise
            except Exception as exc:  # a decoder bug fails this video, named by its URI
                log.exception("%s: decoder failed", uri)
                raise VideoError(f"decoder failed: {exc}", path=uri) from exc
            finally:
                path.unlink(missing_ok=True)
