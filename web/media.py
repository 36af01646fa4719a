"""Files served to the browser: indexed videos with HTTP range requests, thumbnails as they are."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from starlette.responses import Response, StreamingResponse

CHUNK = 256 * 1024
CONTENT_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
    ".mkv": "video/x-matroska", ".ogv": "video/ogg", ".avi": "video/x-msvideo", ".ts": "video/mp2t",
    ".mts": "video/mp2t", ".m2ts": "video/mp2t", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
    ".wmv": "video/x-ms-wmv", ".flv": "video/x-flv", ".3gp": "video/3gpp",
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The byte span [first, last] a Range header asks for; None to send the whole file (no header, or one
    this server does not handle, such as several ranges: RFC 9110 lets a server ignore them); "unsatisfiable"
    when the span lies outside the file."""
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # a suffix: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if m.group(2) and last < first:
        return None  # syntactically invalid: ignored, as RFC 9110 says
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


def _read(path: Path, first: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(first)
        while length > 0:
            block = f.read(min(CHUNK, length))
            if not block:
                return
            length -= len(block)
            yield block


def file_response(path: Path, range_header: str | None, media_type: str) -> Response:
    """200 with the whole file, 206 with the span asked for, or 416 naming the file's size."""
    size = path.stat().st_size
    span = parse_range(range_header, size)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if isinstance(span, str):
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if span is None:
        return StreamingResponse(_read(path, 0, size), media_type=media_type,
                                 headers={**headers, "Content-Length": str(size)})
    first, last = span
    length = last - first + 1
    return StreamingResponse(_read(path, first, length), status_code=206, media_type=media_type,
                             headers={**headers, "Content-Length": str(length),
                                      "Content-Range": f"bytes {first}-{last}/{size}"})
