"""Where the files a result names (thumbnails) are for a reader of the CLI's output: a local path under the
output folder, or the object's URI when the output is in object storage."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from search.timeline import Timeline


def output_root(out_dir: str) -> Path | str:
    """The output folder as a local path, or the object-store URI as given."""
    return out_dir.rstrip("/") if "://" in out_dir else Path(out_dir).expanduser().resolve()


def located(root: Path | str | None, rel: str) -> str:
    """Where a file of the output is for a reader: a local path, or the object's URI."""
    if root is None:
        return rel
    return f"{root}/{rel}" if isinstance(root, str) else str(root / rel)


def located_rows(items: Iterable[Any], root: Path | str | None) -> list[dict[str, Any]]:
    """Each item's `to_json()`, its thumbnail made a full location: a path under the local output folder, or
    the thumbnail object's URI when the output is in object storage."""
    rows = []
    for item in items:
        d = item.to_json()
        if item.thumbnail and root is not None:
            d["thumbnail"] = located(root, item.thumbnail)
        rows.append(d)
    return rows


def located_timeline(timeline: Timeline, root: Path | str) -> dict[str, Any]:
    """A timeline's `to_json()`, each person track's thumbnail made a full location."""
    result = timeline.to_json()
    for track in result["person_tracks"]:
        if track["thumbnail"]:
            track["thumbnail"] = located(root, track["thumbnail"])
    return result
