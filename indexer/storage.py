"""Object storage (S3, and whatever else pyarrow's file systems reach: gs://, ...) for archives and outputs.

Endpoint, region and credentials come from the standard AWS environment and config files (the SDK's own
chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, an EC2 instance
profile); AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_REGION / AWS_DEFAULT_REGION are passed on
explicitly because not every pyarrow version reads them itself.

Videos are staged in a bounded local scratch folder before decoding: NVDEC's demuxer takes a file path
only, and FFmpeg seeks all over an MP4 whose index sits at the end, which over ranged GETs costs a round
trip per seek. Downloads resume where a dropped connection left them, a few times with backoff.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from indexer.errors import VideoError
from schemas.errors import InputError, VidxError
from schemas.retry import GaveUp, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CHUNK = 8 << 20
READ_RETRIES = 4
"""Attempts at a read that a dropped connection or a timeout broke (each resumes where the last stopped)."""
RETRY_BASE_S = 0.5


class StorageError(VidxError):
    """An object store cannot be listed, read or written: a missing bucket, denied access, no network."""


def is_uri(location: str | os.PathLike[str]) -> bool:
    """An object-store URI (s3://, gs://, ...), as opposed to a local path."""
    return isinstance(location, str) and bool(URI_RE.match(location)) and not location.startswith("file://")


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words first, from a pyarrow/AWS SDK error message."""
    text = str(exc).strip() or type(exc).__name__
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        return f"the bucket does not exist ({_first_line(text)})"
    if "ACCESS_DENIED" in upper or "ACCESSDENIED" in upper or "FORBIDDEN" in upper or "HTTP STATUS 403" in upper:
        return f"access denied ({_first_line(text)})"
    if isinstance(exc, FileNotFoundError) or "NO_SUCH_KEY" in upper or "NOSUCHKEY" in upper:
        return "the object does not exist (deleted or moved?)"
    if transient(exc):
        return f"network failure ({_first_line(text)})"
    return _first_line(text)


def transient(exc: BaseException) -> bool:
    """Worth retrying: a dropped or refused connection, a timeout, a throttled or failing server."""
    if isinstance(exc, FileNotFoundError | PermissionError):
        return False
    upper = str(exc).upper()
    if "ACCESS_DENIED" in upper or "NO_SUCH_BUCKET" in upper:
        return False
    return any(word in upper for word in (
        "NETWORK_CONNECTION", "CURL", "TIMEOUT", "TIMED OUT", "CONNECTION", "SLOW_DOWN", "SLOWDOWN",
        "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "REQUEST_TIME_TOO_SKEWED", "THROTTL", "HTTP STATUS 5",
        "UNEXPECTED EOF", "BROKEN PIPE", "RESET", "INCOMPLETE", "PREMATURE"))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", line)


def aws_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of an object-store URI and the path inside it (bucket/key, no scheme)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise InputError("an S3 URI names a bucket: s3://BUCKET/PREFIX", path=uri)
        endpoint = aws_endpoint()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None and endpoint is None:
            region = _bucket_region(parsed.netloc)
        fs = _s3(endpoint, region)
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # an unknown scheme, or a file system this pyarrow was built without
        raise InputError(f"this object store is not supported here: {exc}", path=uri,
                         hint="s3:// works everywhere; gs:// where pyarrow has GCS support") from exc


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """Where a bucket lives, when no region is configured (AWS answers a request in the wrong region with a redirect
    that the SDK does not follow); None if it cannot be asked, and the SDK's own default applies."""
    try:
        return str(pafs.resolve_s3_region(bucket))
    except (OSError, ValueError) as exc:
        log.debug("region of bucket %s not resolved: %s", bucket, exc)
        return None


def forwarded_env() -> dict[str, str]:
    """Where the object store is (endpoint, region), for worker processes started elsewhere (Ray actors).
    Credentials are not passed on: each node resolves its own (instance profile, its environment)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
    return {n: os.environ[n] for n in names if os.environ.get(n)}


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, object] = {
        # Small objects go up as one PutObject (atomic), larger ones as a multipart upload.
        "allow_delayed_open": True,
        "connect_timeout": 5.0, "request_timeout": 30.0,
    }
    if region:
        kwargs["region"] = region
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = url.netloc + url.path.rstrip("/")
        kwargs["scheme"] = url.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def join(uri: str, rel: str) -> str:
    return f"{uri.rstrip('/')}/{rel.lstrip('/')}"


def uri_of(uri_root: str, fs_path: str) -> str:
    """The URI of a path that a file system of `uri_root`'s scheme returned (bucket/key)."""
    return f"{urlparse(uri_root).scheme}://{fs_path}"


# ------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    mtime: float


def list_objects(uri: str) -> list[ObjectInfo]:
    """Every object under a prefix (recursively), or the one object a URI names."""
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [ObjectInfo(uri, int(info.size), _mtime(info))]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=False))
    except FileNotFoundError:
        raise InputError("no object and no objects under this prefix", path=uri,
                         hint="check the bucket and prefix (a prefix is listed recursively)") from None
    except OSError as exc:
        raise StorageError(f"cannot list the archive: {reason(exc)}", path=uri,
                           hint=_hint(exc)) from exc
    return [ObjectInfo(uri_of(uri, i.path), int(i.size), _mtime(i)) for i in infos if i.type == pafs.FileType.File]


def stat_object(uri: str) -> ObjectInfo:
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise StorageError(f"cannot read the object's size: {reason(exc)}", path=uri, hint=_hint(exc)) from exc
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    return ObjectInfo(uri, int(info.size), _mtime(info))


def _mtime(info: pafs.FileInfo) -> float:
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def _hint(exc: BaseException) -> str:
    text = reason(exc)
    if text.startswith("access denied"):
        return "the credentials in use (AWS environment, profile or instance role) need read access to it"
    if text.startswith("the bucket"):
        return "check the bucket name and the region/endpoint (AWS_REGION, AWS_ENDPOINT_URL)"
    if text.startswith("network"):
        return "check the endpoint (AWS_ENDPOINT_URL) and the network"
    return "check the URI and the AWS environment"


def object_version(uri: str) -> tuple[int, str]:
    """(size, version tag) of an object from one HEAD request: the ETag where the store gives one, else its
    modification time. Cheap: nothing of the body is read."""
    fs, path = filesystem(uri)
    try:
        f = fs.open_input_file(path)
        try:
            size = int(f.size())
            meta = {k.decode() if isinstance(k, bytes) else k: v for k, v in f.metadata().items()}
        finally:
            f.close()
    except FileNotFoundError:
        raise VideoError("the object does not exist (deleted or moved?)", path=uri) from None
    except OSError as exc:
        raise VideoError(f"cannot read the object's metadata: {reason(exc)}", path=uri) from exc
    tag = meta.get("ETag") or meta.get("etag") or meta.get("Last-Modified") or meta.get("mtime") or b""
    return size, (tag.decode() if isinstance(tag, bytes) else str(tag)).strip('"')


def object_fingerprint(size: int, tag: str) -> str:
    """An object's fingerprint from its size and ETag (content-derived on S3) or modification time."""
    return hashlib.sha256(f"vidx-fp-obj1:{size}:{tag}".encode()).hexdigest()


# ------------------------------------------------------------------------------------------- reading


def download(uri: str, dest: Path, *, retries: int = READ_RETRIES) -> int:
    """Copy an object to a local file, resuming after a dropped connection; VideoError naming the URI and
    the reason when it cannot be read (missing, denied, or the network failing `retries` times)."""
    fs, path = filesystem(uri)
    done = 0
    with dest.open("wb") as out:

        def read_rest() -> int:
            """Read from where the last attempt stopped to the end."""
            nonlocal done
            f = fs.open_input_file(path)
            try:
                size = int(f.size())
                f.seek(done)
                while done < size:
                    chunk = f.read(min(CHUNK, size - done))
                    if not chunk:
                        raise OSError(f"connection closed early: {done} of {size} bytes read (unexpected EOF)")
                    out.write(chunk)
                    done += len(chunk)
            finally:
                f.close()
            return done

        def give_up(last: GaveUp) -> VideoError:
            return VideoError(f"cannot read the object: {reason(last.error)}; gave up after {last.attempts} "
                              f"attempts ({done} bytes read)", path=uri)

        try:
            return call_with_retries(
                read_rest, RetryPolicy(attempts=retries, first_delay_s=RETRY_BASE_S, max_delay_s=60.0),
                errors=(OSError,), transient=transient, give_up=give_up,
                on_retry=lambda exc, delay: log.warning("%s: read failed at byte %d (%s); retrying in %.1f s",
                                                        uri, done, reason(exc), delay))
        except FileNotFoundError:
            raise VideoError("the object does not exist (deleted or moved?)", path=uri) from None
        except OSError as exc:  # not transient: denied, missing bucket, ...
            raise VideoError(f"cannot read the object: {reason(exc)}", path=uri) from exc


class Scratch:
    """A local folder for staged videos with a byte budget: a download waits while the videos staged by
    others would overflow it (one video larger than the whole budget fails alone, with that reason)."""

    def __init__(self, root: Path | None = None, budget: int | None = None):
        base = Path(root or os.environ.get("VIDX_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "vidx-scratch")
        base.mkdir(parents=True, exist_ok=True)
        _remove_dead(base)
        self.dir = base / f"pid-{os.getpid()}"
        self.dir.mkdir(exist_ok=True)
        if budget is None:
            env = os.environ.get("VIDX_SCRATCH_BYTES")
            # Half the free space by default: the rest of the machine (logs, Ray's spill) keeps room.
            budget = int(env) if env else shutil.disk_usage(base).free // 2
        self.budget = budget
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size: int, uri: str) -> Iterator[None]:
        if size > self.budget:
            raise VideoError(f"the object is larger ({size} bytes) than the scratch space budget "
                             f"({self.budget} bytes in {self.dir.parent})", path=uri,
                             hint="set VIDX_SCRATCH_DIR to a larger disk or VIDX_SCRATCH_BYTES higher")
        with self._cond:
            self._cond.wait_for(lambda: self.used + size <= self.budget)
            self.used += size
        try:
            yield
        finally:
            with self._cond:
                self.used -= size
                self._cond.notify_all()

    def path_for(self, uri: str, key: int) -> Path:
        name = urlparse(uri).path.rsplit("/", 1)[-1] or "object"
        digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
        return self.dir / f"{key}-{digest}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)[-80:]}"


def _remove_dead(base: Path) -> None:
    """Scratch folders of processes of this host that are gone (a crashed worker leaves its staged videos)."""
    for d in base.glob("pid-*"):
        try:
            pid = int(d.name[4:])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


_SCRATCH: Scratch | None = None
_SCRATCH_LOCK = threading.Lock()


def scratch() -> Scratch:
    """The process's scratch space (made on first use)."""
    global _SCRATCH
    with _SCRATCH_LOCK:
        if _SCRATCH is None or _SCRATCH.dir.parent != Path(
                os.environ.get("VIDX_SCRATCH_DIR") or Path(tempfile.gettempdir()) / "vidx-scratch"):
            _SCRATCH = Scratch()
        return _SCRATCH
