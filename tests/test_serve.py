"""The web app's JSON API and files, on a copy of the indexed sample archive: the same answers as the CLI's
--json, uploads held to the photo loader's limits, range requests, and only what the index names served."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from catalog.db import Catalog, default_db_url
from engines.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from engines.photos import photo_path
from vidx.cli import cli
from web.app import TOKEN_HEADER, create_app


@pytest.fixture(scope="module")
def served(private_out: Callable[[str], Path], cache_dir: Path) -> Iterator[tuple[Path, TestClient, str]]:
    """The app over a private copy of the index (labels written here stay here), its client and token."""
    out = private_out("serve-api")
    catalog = Catalog(default_db_url(out))
    app = create_app(str(out), catalog, cache_dir=cache_dir, device="cpu", allowed_hosts=["testserver"])
    with TestClient(app) as client:
        yield out, client, app.state.server.token
    catalog.close()


def vidx(out: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def upload(path: Path) -> dict[str, Any]:
    return {"photo": (path.name, path.read_bytes(), "image/jpeg")}


def same_except_thumbnails(api: list[dict[str, Any]], cli_rows: list[dict[str, Any]], client: TestClient) -> None:
    """Field by field equal; each thumbnail URL serves the very file whose path the CLI prints."""
    assert len(api) == len(cli_rows)
    for a, c in zip(api, cli_rows, strict=True):
        assert {k: v for k, v in a.items() if k != "thumbnail"} == {k: v for k, v in c.items() if k != "thumbnail"}
        assert (a["thumbnail"] is None) == (c["thumbnail"] is None)
        if a["thumbnail"]:
            got = client.get(a["thumbnail"])
            assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
            assert got.content == Path(c["thumbnail"]).read_bytes()


@pytest.mark.parametrize("form", [{}, {"threshold": "0", "top": "100"}, {"threshold": "0.5", "top": "1", "face": "1"}])
def test_search_answers_what_the_cli_answers(served: tuple[Path, TestClient, str], cache_dir: Path,
                                             form: dict[str, str]) -> None:
    out, client, _ = served
    photo = photo_path("obama2", cache_dir)
    options = [x for k, v in form.items() for x in (f"--{k}", v)]
    expected = vidx(out, "search", "--photo", str(photo), "--device", "cpu", *options)
    got = client.post("/api/search", files=upload(photo), data=form)
    assert got.status_code == 200, got.text
    same_except_thumbnails(got.json(), expected, client)
    assert expected, "the photo's person is in the archive"


def test_faces_are_numbered_by_size_as_face_n_is(served: tuple[Path, TestClient, str], cache_dir: Path) -> None:
    out, client, _ = served
    t1 = photo_path("t1", cache_dir)
    faces = client.post("/api/faces", files=upload(t1)).json()
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces["faces"]]
    assert len(areas) >= 5 and areas == sorted(areas, reverse=True)
    assert [f["face"] for f in faces["faces"]] == list(range(1, len(areas) + 1))
    assert (faces["width"], faces["height"]) == Image.open(t1).size
    expected = vidx(out, "search", "--photo", str(t1), "--face", "2", "--device", "cpu", "--threshold", "0.6")
    got = client.post("/api/search", files=upload(t1), data={"face": "2", "threshold": "0.6"}).json()
    same_except_thumbnails(got, expected, client)
    too_far = client.post("/api/search", files=upload(t1), data={"face": str(len(areas) + 1)})
    assert too_far.status_code == 400 and f"has {len(areas)} face(s)" in too_far.json()["error"]


def test_uploads_are_held_to_the_photo_loaders_limits(served: tuple[Path, TestClient, str], tmp_path: Path) -> None:
    _, client, _ = served
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10  # a few kilobytes of PNG, over the pixel limit once decoded
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    bomb = client.post("/api/search", files={"photo": ("huge.png", buf.getvalue(), "image/png")})
    assert bomb.status_code == 400 and "over the limit" in bomb.json()["error"] and "huge.png" in bomb.json()["error"]
    oversized = b"\xff" * (MAX_IMAGE_BYTES + (2 << 20))
    big = client.post("/api/search", files={"photo": ("big.jpg", oversized, "image/jpeg")})
    assert big.status_code == 413 and "refused" in big.json()["error"]
    text = client.post("/api/search", files={"photo": ("notes.txt", b"not an image", "text/plain")})
    assert text.status_code == 400 and "notes.txt: not a readable image" in text.json()["error"]
    y, x = np.mgrid[0:240, 0:320]
    landscape = io.BytesIO()
    Image.fromarray(np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 90)], -1).astype(np.uint8)).save(
        landscape, format="PNG")
    none = client.post("/api/search", files={"photo": ("landscape.png", landscape.getvalue(), "image/png")})
    assert none.status_code == 400 and "landscape.png: no face found in the photo" in none.json()["error"]
    neither = client.post("/api/search", data={"threshold": "0.5"})
    assert neither.status_code == 400 and "exactly one" in neither.json()["error"]
    assert client.post("/api/search", data={"person": "Nobody"}).status_code == 404


def test_videos_stream_with_range_requests(served: tuple[Path, TestClient, str]) -> None:
    _, client, _ = served
    videos = {Path(v["video"]).name: v for v in client.get("/api/videos").json()}
    meeting = videos["meeting_h264.mp4"]
    data = Path(meeting["video"]).read_bytes()
    url = f"/media/videos/{meeting['video_id']}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}" and part.headers["content-length"] == "1000"
    tail = client.get(url, headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]
    assert client.get(url, headers={"Range": f"bytes={len(data) - 10}-"}).content == data[-10:]
    past = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    assert client.get(url, headers={"Range": "bytes=5-2"}).status_code == 200  # invalid: ignored, whole file
    assert videos["broken.mp4"]["status"] == "failed"
    refused = client.get(f"/media/videos/{videos['broken.mp4']['video_id']}")  # in the index, never indexed
    assert refused.status_code == 404 and "error" in refused.json()
    assert client.get("/media/videos/99999").status_code == 404


def test_only_thumbnails_the_index_names_are_served(served: tuple[Path, TestClient, str]) -> None:
    _, client, _ = served
    for bad in ("..%2Findex.sqlite", "..%2F..%2Fetc%2Fpasswd", "999-0", "1-p99", "index.sqlite"):
        got = client.get(f"/media/thumbnails/{bad}")
        assert got.status_code == 404 and b"SQLite" not in got.content
    assert client.get("/static/../index.sqlite").status_code == 404


def test_state_changes_need_the_pages_token_and_this_origin(served: tuple[Path, TestClient, str]) -> None:
    out, client, token = served
    track = next(f["track_id"] for v in client.get("/api/videos").json() if v["face_tracks"]
                 for f in client.get(f"/api/videos/{v['video_id']}/faces").json())
    body = {"track_id": track, "name": "Token Test"}
    assert client.post("/api/labels", json=body).status_code == 403
    assert client.post("/api/labels", json=body, headers={TOKEN_HEADER: "guess"}).status_code == 403
    cross = client.post("/api/labels", json=body, headers={TOKEN_HEADER: token, "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    assert "Token Test" not in {p["name"] for p in vidx(out, "person", "list")}
    page = client.get("/people").text
    assert f'<meta name="vidx-token" content="{token}">' in page
    done = client.post("/api/labels", json=body, headers={TOKEN_HEADER: token, "Origin": "http://testserver"})
    assert done.status_code == 200 and done.json() == {"name": "Token Test", "labelled": [track], "already": [],
                                                       "conflict": []}
    assert "Token Test" in {p["name"] for p in vidx(out, "person", "list")}
    removed = client.post("/api/unlabel", json={"track_id": track}, headers={TOKEN_HEADER: token})
    assert removed.json() == {"track_id": track, "removed": 1}
    assert client.get("/api/videos", headers={"Host": "rebound.example"}).status_code == 400


def test_people_clusters_timelines_and_jobs_match_the_cli(served: tuple[Path, TestClient, str]) -> None:
    out, client, token = served
    api = client.post("/api/clusters", json={}, headers={TOKEN_HEADER: token})
    assert api.status_code == 200
    assert client.get("/api/clusters").json() == api.json()  # what it stored
    cli_clusters = vidx(out, "people", "cluster")
    assert {frozenset(c["track_ids"]) for c in api.json()} == {frozenset(c["track_ids"]) for c in cli_clusters}
    same_except_thumbnails(client.get("/api/clusters").json(), cli_clusters, client)
    name = '<script>alert("x")</script> & Co'
    labelled = client.post("/api/labels", json={"cluster": cli_clusters[0]["id"], "name": name},
                           headers={TOKEN_HEADER: token}).json()
    assert sorted(labelled["labelled"]) == sorted(cli_clusters[0]["track_ids"])
    assert client.get("/api/people").json() == vidx(out, "person", "list")
    assert client.get("/api/clusters").json()[0]["person"] == name
    page = client.get("/people").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in page
    for v in client.get("/api/videos").json():
        if v["status"] != "indexed":
            continue
        got = client.get(f"/api/videos/{v['video_id']}/timeline").json()
        expected = vidx(out, "people", "timeline", str(v["video_id"]))
        same_except_thumbnails(got["person_tracks"], expected["person_tracks"], client)
        assert {k: x for k, x in got.items() if k != "person_tracks"} == {
            k: x for k, x in expected.items() if k != "person_tracks"}
        assert client.get(f"/videos/{v['video_id']}").status_code == 200
    assert client.get("/api/jobs").json() == vidx(out, "job", "list")
    job = client.get("/api/jobs").json()[0]["job_id"]
    assert client.get(f"/api/jobs/{job}").json() == vidx(out, "job", "status", str(job))
    missing = client.get("/api/jobs/999")
    assert missing.status_code == 404 and "no job 999" in missing.json()["error"]
    for path in ("/search", "/people", "/videos", "/jobs", f"/jobs/{job}"):
        assert client.get(path).status_code == 200
    assert "openapi" in client.get("/api/openapi.json").json()
