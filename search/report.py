"""The HTML report of a search: one self-contained page (thumbnails inlined as data URIs, no scripts).

The page shows the query (the face cropped from the photo, or the person's name), a timeline per
video with a mark where the person appears and, below it, a lane of the video's person tracks (every
body seen, the one the found face belongs to highlighted), then each appearance: thumbnail, video name,
score and times that open the video at that moment (file URL with a `#t=start,end` media fragment).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

from catalog.db import Catalog
from schemas.errors import VidxError
from search.query import Hit, QueryFace
from search.timeline import PersonSpan, video_timeline

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.query{display:flex;gap:16px;align-items:center}.query img{width:128px;border-radius:6px}
.timeline{margin:6px 0 14px}.timeline .name{font-size:13px;margin-bottom:3px}
.bar{position:relative;height:14px;background:#ddd;border-radius:3px}
.seg{position:absolute;top:0;height:14px;background:#d9480f;border-radius:3px;min-width:3px}
.people{position:relative;margin-top:2px;background:#eee;border-radius:3px}
.pseg{position:absolute;height:5px;background:#868e96;border-radius:2px;min-width:2px}
.pseg.found{background:#d9480f}
.hits{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px}
.hit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.hit img{width:100%;border-radius:4px}.hit .video{font-weight:600;word-break:break-all}
.score{color:#555;font-size:13px}.noimg{height:120px;background:#eee;display:flex;align-items:center;
justify-content:center;color:#888;font-size:12px}
"""


def _data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def face_crop_jpeg(photo: Path, box: list[float], size: int = 160) -> bytes:
    """The query face, cut from the photo with a margin, as a small JPEG."""
    from PIL import Image

    from engines.images import load_rgb

    image = load_rgb(photo)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    m = 0.35 * max(x1 - x0, y1 - y0)
    crop = image[max(0, int(y0 - m)):min(h, int(y1 + m)), max(0, int(x0 - m)):min(w, int(x1 + m))]
    pil = Image.fromarray(np.ascontiguousarray(crop))
    pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def video_url(path: str, start_s: float, end_s: float) -> str:
    """A link that opens the video at the appearance (W3C media fragment)."""
    base = path if "://" in path else Path(path).resolve().as_uri()
    return f"{base}#t={start_s:.2f},{end_s:.2f}"


def _fmt(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:05.2f}"


def _people_lane(spans: list[PersonSpan], length: float, found: set[str]) -> str:
    """Person tracks as thin bars, one row per track that overlaps an earlier one (so concurrent people
    show as stacked bars); the tracks the found faces belong to are highlighted."""
    rows: list[float] = []  # end time of the last bar in each row
    bars = []
    for s in sorted(spans, key=lambda s: (s.start_s, s.end_s)):
        row = next((i for i, end in enumerate(rows) if end < s.start_s), len(rows))
        if row == len(rows):
            rows.append(s.end_s)
        rows[row] = s.end_s
        left = 100.0 * s.start_s / length
        width = max(100.0 * (s.end_s - s.start_s) / length, 0.3)
        cls = "pseg found" if s.person_track_id in found else "pseg"
        bars.append(f'<div class="{cls}" data-person-track="{html.escape(s.person_track_id)}" '
                    f'style="left:{left:.2f}%;width:{width:.2f}%;top:{row * 7}px" '
                    f'title="person track {html.escape(s.person_track_id)}: {_fmt(s.start_s)} - {_fmt(s.end_s)}">'
                    f'</div>')
    return f'<div class="people" style="height:{max(len(rows), 1) * 7}px">{"".join(bars)}</div>'


def _thumbnail_bytes(out_root: Path | str | None, rel: str) -> bytes | None:
    """A thumbnail's bytes from the output folder or object store; None when it cannot be read (the page says so)."""
    if out_root is None:
        return None
    if isinstance(out_root, Path):
        p = out_root / rel
        return p.read_bytes() if p.is_file() else None
    from indexer.write import OutputStore

    try:
        return OutputStore(out_root).read_bytes(rel)
    except (OSError, VidxError) as exc:
        log.warning("thumbnail %s/%s not read: %s", out_root, rel, exc)
        return None


def render_report(hits: list[Hit], *, out_root: Path | str | None, query: QueryFace | None = None,
                  person: str | None = None, threshold: float | None = None,
                  person_tracks: dict[str, list[PersonSpan]] | None = None) -> str:
    """The page as a string. Thumbnails are read from `out_root` (the output folder or object-store URI) and inlined;
    `person_tracks` (by video path) draws each video's person tracks under its timeline."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>vidx search: {e(person or (query.photo.name if query else 'query'))}</title>",
             f"<style>{CSS}</style></head><body>"]
    parts.append('<section class="query">')
    if query is not None:
        uri = _data_uri(face_crop_jpeg(query.photo, query.box))
        parts.append(f'<img id="query-face" alt="query face" src="{uri}">')
        parts.append(f"<div><h1>Appearances of the face in {e(query.photo.name)}</h1>"
                     f"<div>face {query.face} of {query.faces_in_photo} in the photo</div>")
    else:
        parts.append(f"<div><h1>Appearances of {e(person or '?')}</h1>")
    summary = f"{len(hits)} appearance(s)"
    if threshold is not None:
        summary += f" scoring {threshold:.2f} or more"
    parts.append(f'<div id="summary">{summary}</div></div></section>')

    by_video: dict[str, list[Hit]] = {}
    for h in hits:
        by_video.setdefault(h.video, []).append(h)
    parts.append("<h2>Timelines</h2>")
    for video, vh in sorted(by_video.items()):
        spans = (person_tracks or {}).get(video, [])
        length = max([h.duration_s or 0.0 for h in vh] + [h.end_s for h in vh] + [s.end_s for s in spans]) or 1.0
        parts.append(f'<div class="timeline"><div class="name">{e(Path(video).name)}</div><div class="bar">')
        for h in sorted(vh, key=lambda h: h.start_s):
            left = 100.0 * h.start_s / length
            width = max(100.0 * (h.end_s - h.start_s) / length, 0.5)
            parts.append(f'<a class="seg" href="{e(video_url(h.video, h.start_s, h.end_s))}" '
                         f'style="left:{left:.2f}%;width:{width:.2f}%" '
                         f'title="{e(_fmt(h.start_s))} - {e(_fmt(h.end_s))}"></a>')
        parts.append("</div>")
        if spans:
            parts.append(_people_lane(spans, length, {h.person_track_id for h in vh if h.person_track_id}))
        parts.append("</div>")

    parts.append('<h2>Appearances</h2><div class="hits">')
    for rank, h in enumerate(hits, 1):
        data = _thumbnail_bytes(out_root, h.thumbnail) if h.thumbnail else None
        thumb = _data_uri(data) if data else None
        img = (f'<img alt="thumbnail of track {e(h.track_id)}" src="{thumb}">' if thumb
               else '<div class="noimg">no thumbnail</div>')
        url = e(video_url(h.video, h.start_s, h.end_s))
        who = f" · {e(h.person)}" if h.person else ""
        tag = " · labelled" if h.labelled else ""
        body = f" · person {e(h.person_track_id)}" if h.person_track_id else ""
        parts.append(f'<div class="hit" data-rank="{rank}" data-track="{e(h.track_id)}">{img}'
                     f'<div class="video">{e(Path(h.video).name)}</div>'
                     f'<div><a class="time" href="{url}">{e(_fmt(h.start_s))} - {e(_fmt(h.end_s))}</a></div>'
                     f'<div class="score">score {h.score:.2f} · track {e(h.track_id)}{body}{who}{tag}</div></div>')
    parts.append("</div></body></html>")
    return "\n".join(parts)


def search_report(catalog: Catalog, hits: list[Hit], *, out_root: Path | str | None, query: QueryFace | None = None,
                  person: str | None = None, threshold: float | None = None) -> str:
    """render_report of a search's hits, each hit's video with its person tracks read from the index."""
    people = {h.video: video_timeline(catalog, h.video_id).person_tracks for h in hits}
    return render_report(hits, out_root=out_root, query=query, person=person, threshold=threshold,
                         person_tracks=people)
