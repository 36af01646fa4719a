"""The web app: pages to search by photo, browse people, videos and jobs, and the JSON API under /api.

Every answer comes from the query functions the CLI calls (search.query, search.people, search.timeline,
catalog.job_state); this module turns requests into those calls and their results into JSON or HTML. Files
reach the browser only by id: a video by its row in the index, a thumbnail by the track that names it.
"""

from __future__ import annotations

import hmac
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.db import Catalog
from catalog.job_state import JobStateError, job_info, list_jobs
from engines.errors import ImageError
from engines.images import MAX_IMAGE_BYTES
from schemas.errors import InputError, VidxError
from schemas.ids import face_track_id, parse_face_track_id, parse_person_track_id, person_track_id
from schemas.sql import PersonTrack, Track, Video
from search import people as people_q
from search import query as search_q
from search import timeline as timeline_q
from web.media import content_type, file_response

HERE = Path(__file__).resolve().parent
TOKEN_HEADER = "X-Vidx-Token"  # noqa: S105 - the header's name; the token itself is made per server
UPLOAD_SLACK = 1 << 20
"""Bytes a multipart request may carry beyond the photo itself (boundaries, headers, the form fields)."""


@dataclass
class Server:
    """What the app serves: one index (SQL + output folder) and the models a photo query needs."""

    out_dir: str
    catalog: Catalog
    cache_dir: Path | None = None
    device: str = "auto"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _engines: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path | None:
        """The output folder on this machine (None for an object store: then no thumbnails are served)."""
        return Path(self.out_dir).expanduser().resolve() if "://" not in self.out_dir else None

    def engines(self) -> Any:
        """The face detector and embedder, loaded on the first photo query and kept."""
        with self._lock:
            if self._engines is None:
                from engines.zoo import ModelStore

                self._engines = search_q.query_engines(ModelStore(self.cache_dir), self.device)
            return self._engines

    def faces_of(self, photo: Path, face: int | None) -> search_q.QueryFace:
        engines = self.engines()
        with self._lock:  # one photo at a time: the models' own threads already fill the cores
            return search_q.detect_query_face(engines, photo, face)

    def photo_faces(self, photo: Path) -> dict[str, Any]:
        engines = self.engines()
        with self._lock:
            return search_q.photo_faces(engines, photo)


# ------------------------------------------------------------------------------------------ safety


class BodyLimit:
    """Refuses request bodies over `limit` bytes (413) while they arrive, before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await JSONResponse({"error": f"the request is over {self.limit // 2**20} MiB; photos over "
                                     f"{MAX_IMAGE_BYTES // 2**20} MiB are refused"},
                           status_code=413)({"type": "http"}, _no_body, send)


class _TooLarge(Exception):
    pass


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def check_origin(request: Request) -> None:
    """A POST from a browser must come from this server's own pages (clients that are no browser send no
    Origin); uploads need no more, as they change nothing."""
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise HTTPException(403, "cross-origin request refused")
    if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        raise HTTPException(403, "cross-site request refused")


def check_post(request: Request, server: Server) -> None:
    """A state-changing request must come from this server's own pages: same origin, and the page's token."""
    check_origin(request)
    sent = request.headers.get(TOKEN_HEADER.lower(), "")
    if not hmac.compare_digest(sent.encode(), server.token.encode()):
        raise HTTPException(403, f"missing or wrong {TOKEN_HEADER} header (it is in every page of this server)")


def status_for(exc: VidxError) -> int:
    """The HTTP status of an error the query functions raise: what is not there is a 404."""
    if isinstance(exc, ImageError):
        return 400
    if isinstance(exc, InputError | JobStateError):
        return 404 if exc.message.startswith("no ") else 400 if isinstance(exc, InputError) else 409
    return 500


# ------------------------------------------------------------------------------------------ answers


def thumbnail_ids(catalog: Catalog, paths: set[str]) -> dict[str, str]:
    """Public id of the live track (face or person) each thumbnail path belongs to."""
    out: dict[str, str] = {}
    if not paths:
        return out
    with catalog.session() as s:
        for model in (Track, PersonTrack):
            rows = s.execute(select(model.video_id, model.track_index, model.thumbnail)
                             .join(Video, Video.id == model.video_id)
                             .where(model.run_id == Video.run_id, model.thumbnail.in_(sorted(paths)))).all()
            name = face_track_id if model is Track else person_track_id
            out.update({thumb: name(video_id, index) for video_id, index, thumb in rows if thumb})
    return out


def thumbnail_url(track_id: str) -> str:
    return f"/media/thumbnails/{track_id}"


def with_urls(catalog: Catalog, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the CLI's --json prints them, each thumbnail path made the URL that serves it."""
    ids = thumbnail_ids(catalog, {r["thumbnail"] for r in rows if r.get("thumbnail")})
    for r in rows:
        if r.get("thumbnail"):
            r["thumbnail"] = thumbnail_url(ids[r["thumbnail"]]) if r["thumbnail"] in ids else None
    return rows


def hits_json(hits: list[search_q.Hit]) -> list[dict[str, Any]]:
    """`vidx search --json`, the thumbnail (the best track's) as a URL."""
    rows = []
    for h in hits:
        d = h.to_json()
        if h.thumbnail:
            d["thumbnail"] = thumbnail_url(h.track_id)
        rows.append(d)
    return rows


def timeline_json(tl: timeline_q.Timeline) -> dict[str, Any]:
    """`vidx people timeline --json`, thumbnails as URLs."""
    d = tl.to_json()
    for t in d["person_tracks"]:
        if t["thumbnail"]:
            t["thumbnail"] = thumbnail_url(t["person_track_id"])
    return d


class LabelRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    track_id: str | None = Field(default=None, description="a face track id such as 12-3")
    cluster: int | None = Field(default=None, description="a cluster id from /api/clusters")


class UnlabelRequest(BaseModel):
    track_id: str
    name: str | None = None


class ClusterRequest(BaseModel):
    eps: float = Field(default=people_q.DEFAULT_EPS, ge=0.05, le=2.0)
    min_samples: int = Field(default=people_q.DEFAULT_MIN_SAMPLES, ge=1)


def stack_rows(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each span (start_s, end_s) with the first timeline row free at its start, so overlapping ones stack."""
    ends: list[float] = []
    for span in sorted(spans, key=lambda x: (x["start_s"], x["end_s"])):
        row = next((i for i, end in enumerate(ends) if end < span["start_s"]), len(ends))
        ends[row:row + 1] = [span["end_s"]]
        span["row"] = row
    return spans


# ------------------------------------------------------------------------------------------ the app


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(float(seconds), 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


def create_app(out_dir: str, catalog: Catalog, *, cache_dir: Path | None = None, device: str = "auto",
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app over one index. `allowed_hosts`: Host headers answered (the names this server is reached by;
    anything else is refused, so a web page cannot reach it through a DNS name rebound to 127.0.0.1)."""
    server = Server(out_dir, catalog, cache_dir, device)
    app = FastAPI(title="vidx", summary="Search a video archive's index: people, appearances, videos, jobs.",
                  version="1", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.server = server
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["127.0.0.1", "localhost"])
    app.add_middleware(BodyLimit, limit=MAX_IMAGE_BYTES + UPLOAD_SLACK)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["time"] = fmt_time
    env.filters["basename"] = lambda p: Path(str(p)).name

    def page(request: Request, name: str, status: int = 200, **data: Any) -> HTMLResponse:
        html = env.get_template(name).render(token=server.token, path=request.url.path, **data)
        return HTMLResponse(html, status_code=status,
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                                                "style-src 'self' 'unsafe-inline'; "
                                                                "media-src 'self'; object-src 'none'; "
                                                                "frame-ancestors 'none'",
                                     "X-Content-Type-Options": "nosniff"})

    def is_api(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/media/"))

    @app.exception_handler(VidxError)
    async def vidx_error(request: Request, exc: VidxError) -> Response:
        if is_api(request):
            return JSONResponse({"error": exc.describe()}, status_code=status_for(exc))
        return page(request, "error.html", status_for(exc), title="Not found", message=exc.describe())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_api(request):
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
        return page(request, "error.html", exc.status_code, title="Not found" if exc.status_code == 404 else "Error",
                    message=str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        what = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": what}, status_code=422)

    # ---------------------------------------------------------------------------------- pages

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/search", status_code=303)

    @app.get("/search", include_in_schema=False)
    def search_page(request: Request) -> Response:
        return page(request, "search.html", threshold=search_q.DEFAULT_THRESHOLD)

    @app.get("/people", include_in_schema=False)
    def people_page(request: Request) -> Response:
        clusters = with_urls(catalog, [c.to_json() for c in people_q.stored_clusters(catalog)])
        faces = {c["person"]: c["thumbnail"] for c in reversed(clusters) if c["person"] and c["thumbnail"]}
        return page(request, "people.html", people=[p.to_json() for p in people_q.list_people(catalog)],
                    clusters=clusters, faces=faces)

    @app.get("/videos", include_in_schema=False)
    def videos_page(request: Request) -> Response:
        return page(request, "videos.html", videos=[v.to_json() for v in timeline_q.list_videos(catalog)])

    @app.get("/videos/{video_id}", include_in_schema=False)
    def video_page(request: Request, video_id: int) -> Response:
        tl = timeline_json(timeline_q.video_timeline(catalog, video_id))
        faces = with_urls(catalog, [f.to_json() for f in people_q.video_face_tracks(catalog, video_id)])
        info = next(v.to_json() for v in timeline_q.list_videos(catalog) if v.video_id == video_id)
        tl["person_tracks"] = stack_rows(tl["person_tracks"])
        return page(request, "video.html", video=info, timeline=tl, faces=stack_rows(faces))

    @app.get("/jobs", include_in_schema=False)
    def jobs_page(request: Request) -> Response:
        return page(request, "jobs.html", jobs=[j.to_json() for j in list_jobs(catalog, limit=100)])

    @app.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: int) -> Response:
        return page(request, "job.html", job=job_info(catalog, job_id).to_json())

    # ---------------------------------------------------------------------------------- API

    def saved_upload(photo: UploadFile, folder: Path) -> Path:
        """The uploaded photo in a private temporary file (its name is never used to build a path)."""
        target = folder / "photo"
        with target.open("wb") as f:
            copied = 0
            while block := photo.file.read(1 << 20):
                copied += len(block)
                if copied > MAX_IMAGE_BYTES:
                    raise HTTPException(413, f"the photo is over {MAX_IMAGE_BYTES // 2**20} MiB; larger images "
                                             "are refused")
                f.write(block)
        return target

    def named(exc: ImageError, photo: UploadFile) -> ImageError:
        """The error about the temporary file, told about the file the user sent."""
        return ImageError(exc.message, path=Path(photo.filename or "photo").name, hint=exc.hint)

    @app.post("/api/search", tags=["search"], summary="Find a person by photo or by name (vidx search --json)")
    def api_search(request: Request,
                   photo: Annotated[UploadFile | None, File(description="a photo of the person")] = None,
                   person: Annotated[str | None, Form(description="or the name of a known person")] = None,
                   threshold: Annotated[float | None, Form(ge=0, le=1)] = None,
                   top: Annotated[int, Form(ge=1, le=10_000)] = 20,
                   face: Annotated[int | None, Form(ge=1, description="which face of the photo, 1 = largest")] = None,
                   video: Annotated[str | None, Form(description="glob on the video path or name")] = None,
                   after: Annotated[float | None, Form(ge=0)] = None,
                   before: Annotated[float | None, Form(ge=0)] = None) -> list[dict[str, Any]]:
        check_origin(request)
        if (photo is None) == (not person):
            raise HTTPException(400, "give exactly one of the fields photo (a file) or person (a name)")
        if after is not None and before is not None and after > before:
            raise HTTPException(400, "after must not be later than before")
        threshold = search_q.DEFAULT_THRESHOLD if threshold is None else threshold
        filters = search_q.Filters(video or None, after, before)
        query = None
        if photo is not None:
            with tempfile.TemporaryDirectory(prefix="vidx-upload-") as tmp:
                try:
                    query = server.faces_of(saved_upload(photo, Path(tmp)), face).embedding
                except ImageError as exc:
                    raise named(exc, photo) from exc
        hits = search_q.find_appearances(catalog, out_dir, query=query, person=person if query is None else None,
                                         top=top, threshold=threshold, filters=filters)
        return hits_json(hits)

    @app.post("/api/faces", tags=["search"], summary="The faces of a photo, numbered by size (--face N)")
    def api_faces(request: Request, photo: Annotated[UploadFile, File()]) -> dict[str, Any]:
        check_origin(request)
        with tempfile.TemporaryDirectory(prefix="vidx-upload-") as tmp:
            try:
                return server.photo_faces(saved_upload(photo, Path(tmp)))
            except ImageError as exc:
                raise named(exc, photo) from exc

    @app.get("/api/people", tags=["people"], summary="Named people (vidx person list --json)")
    def api_people() -> list[dict[str, Any]]:
        return [p.to_json() for p in people_q.list_people(catalog)]

    @app.get("/api/clusters", tags=["people"], summary="Face groups as the last clustering left them")
    def api_clusters() -> list[dict[str, Any]]:
        return with_urls(catalog, [c.to_json() for c in people_q.stored_clusters(catalog)])

    @app.post("/api/clusters", tags=["people"], summary="Group the faces again (vidx people cluster --json)")
    def api_cluster(request: Request, body: ClusterRequest | None = None) -> list[dict[str, Any]]:
        check_post(request, server)
        body = body or ClusterRequest()
        clusters = people_q.cluster_index(catalog, out_dir, eps=body.eps, min_samples=body.min_samples)
        return with_urls(catalog, [c.to_json() for c in clusters])

    @app.post("/api/labels", tags=["people"], summary="Label a face track or a cluster (vidx person label --json)")
    def api_label(request: Request, body: LabelRequest) -> dict[str, Any]:
        check_post(request, server)
        return people_q.label(catalog, body.name, track_id=body.track_id, cluster_id=body.cluster)

    @app.post("/api/unlabel", tags=["people"], summary="Remove a track's labels (vidx person unlabel --json)")
    def api_unlabel(request: Request, body: UnlabelRequest) -> dict[str, Any]:
        check_post(request, server)
        return people_q.unlabel(catalog, body.track_id, body.name or None)

    @app.get("/api/videos", tags=["videos"], summary="Every video of the index, with its track counts")
    def api_videos() -> list[dict[str, Any]]:
        return [v.to_json() for v in timeline_q.list_videos(catalog)]

    @app.get("/api/videos/{video_id}/timeline", tags=["videos"],
             summary="Person tracks and head counts (vidx people timeline --json)")
    def api_timeline(video_id: int) -> dict[str, Any]:
        return timeline_json(timeline_q.video_timeline(catalog, video_id))

    @app.get("/api/videos/{video_id}/faces", tags=["videos"], summary="A video's face tracks, with label names")
    def api_video_faces(video_id: int) -> list[dict[str, Any]]:
        timeline_q.video_timeline(catalog, video_id)  # a video that is not in the index is a 404
        return with_urls(catalog, [f.to_json() for f in people_q.video_face_tracks(catalog, video_id)])

    @app.get("/api/jobs", tags=["jobs"], summary="Recent jobs, newest first (vidx job list --json)")
    def api_jobs(limit: Annotated[int, Query(ge=1, le=10_000)] = 20) -> list[dict[str, Any]]:
        return [j.to_json() for j in list_jobs(catalog, limit=limit)]

    @app.get("/api/jobs/{job_id}", tags=["jobs"], summary="A job's state (vidx job status ID --json)")
    def api_job(job_id: int) -> dict[str, Any]:
        return job_info(catalog, job_id).to_json()

    # ---------------------------------------------------------------------------------- files

    @app.get("/media/videos/{video_id}", tags=["files"], summary="An indexed video, with HTTP range requests")
    def video_file(request: Request, video_id: int) -> Response:
        with catalog.session() as s:
            v = s.get(Video, video_id)
            path = Path(v.path) if v is not None and v.run_id is not None else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"no indexed video {video_id}")
        return file_response(path, request.headers.get("range"), content_type(path))

    @app.get("/media/thumbnails/{track_id}", tags=["files"], summary="A live track's thumbnail (JPEG)")
    def thumbnail_file(track_id: str) -> Response:
        path = thumbnail_path(catalog, server.root, track_id)
        if path is None:
            raise HTTPException(404, f"no thumbnail for track {track_id}")
        return file_response(path, None, "image/jpeg")

    return app


def thumbnail_path(catalog: Catalog, root: Path | None, track_id: str) -> Path | None:
    """The thumbnail file the index names for a live face (12-3) or person (12-p0) track, inside the output
    folder; None when there is none."""
    if root is None:
        return None
    try:
        video_id, index = parse_person_track_id(track_id) if "-p" in track_id else parse_face_track_id(track_id)
    except InputError:
        return None
    model: Any = PersonTrack if "-p" in track_id else Track
    with catalog.session() as s:
        thumb = s.scalar(select(model.thumbnail).join(Video, Video.id == model.video_id)
                         .where(model.run_id == Video.run_id, model.video_id == video_id,
                                model.track_index == index))
    if not thumb:
        return None
    path = (root / thumb).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def serve(out_dir: str, db_url: str, *, host: str, port: int, cache_dir: Path | None, device: str,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    catalog = Catalog(db_url)
    # Bound to every interface, the server is reached by names it cannot know: it answers any Host then.
    hosts = ["127.0.0.1", "localhost", "[::1]", host] if host not in ("0.0.0.0", "::") else ["*"]  # noqa: S104
    app = create_app(out_dir, catalog, cache_dir=cache_dir, device=device, allowed_hosts=hosts)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{port}/")
    server.run()

