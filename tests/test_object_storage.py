"""Archives and results in object storage, against a real S3-compatible server on 127.0.0.1 (moto's server).

The session's sample archive is uploaded to a bucket and indexed once from there into another bucket; the
tracks must match the local run's. Requests go through a proxy (tests/s3server.py) that can break chosen
connections, as a flaky network does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner
from s3server import Cut, FaultProxy, moto_server  # tests/s3server.py
from sqlalchemy import select

from catalog.archive import VideoFile, scan_archive, video_fingerprint
from catalog.db import Catalog
from indexer import storage
from indexer.errors import VideoError
from indexer.write import OutputError, OutputStore
from jobs.runner import JobResult, LocalExecutor, drive_job, plan, run_job
from samples.archive import SampleVideo
from schemas.config import IndexSettings, RuntimeConfig
from schemas.sql import Track, Video
from schemas.tables import FACES, TRACKS

ARCHIVE_BUCKET, OUT_BUCKET = "vidx-archive", "vidx-results"
ARCHIVE = f"s3://{ARCHIVE_BUCKET}/archive"
OUT = f"s3://{OUT_BUCKET}/out"
SETTINGS = IndexSettings(runtime=RuntimeConfig(device="cpu"))
Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


@dataclass
class S3:
    endpoint: str
    """The server itself; the code under test reaches it through `proxy` (AWS_ENDPOINT_URL)."""
    proxy: FaultProxy
    client: Any
    """boto3, for the tests' own set-up (buckets, users, uploads outside the code under test)."""

    @property
    def fs(self) -> pafs.S3FileSystem:
        return storage.filesystem("s3://x")[0]  # type: ignore[return-value]

    def put(self, uri: str, data: bytes) -> None:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def keys(self, uri: str) -> list[str]:
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1 behind a fault proxy, and the standard AWS environment pointing at it."""
    import boto3

    with moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        host, port = endpoint.removeprefix("http://").split(":")
        proxy = FaultProxy((host, int(port)))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        mp.setenv("VIDX_SCRATCH_DIR", str(tmp_path_factory.mktemp("scratch")))
        mp.setattr(storage, "RETRY_BASE_S", 0.05)  # the backoff's shape is what matters here, not its length
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for bucket in (ARCHIVE_BUCKET, OUT_BUCKET):
            client.create_bucket(Bucket=bucket)
        try:
            yield S3(endpoint, proxy, client)
        finally:
            proxy.close()


@dataclass
class BucketRun:
    local: Indexed
    catalog: Catalog
    result: JobResult
    db: str


@pytest.fixture(scope="module")
def bucket_indexed(s3: S3, indexed: Indexed, tmp_path_factory: pytest.TempPathFactory,
                   cache_dir: Path) -> BucketRun:
    """The session's sample archive uploaded to a bucket (plus a note, an object deleted after the job was
    planned and one whose downloads always break) and indexed once from there into another bucket."""
    videos = indexed[0]
    root = Path(videos[0].path).parent
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.put(f"{ARCHIVE}/{path.relative_to(root).as_posix()}", path.read_bytes())
    smallest = min(videos, key=lambda v: Path(v.path).stat().st_size)
    s3.put(f"{ARCHIVE}/notes.txt", b"not a video")
    s3.put(f"{ARCHIVE}/extra/gone.mp4", Path(smallest.path).read_bytes())
    s3.put(f"{ARCHIVE}/extra/unreachable.mp4", Path(smallest.path).read_bytes())
    s3.proxy.cuts.append(Cut(b"unreachable.mp4", after=16384))
    db = f"sqlite:///{tmp_path_factory.mktemp('bucket') / 'index.sqlite'}"
    catalog = Catalog(db)
    job_id, queued, _, _ = plan(ARCHIVE, catalog=catalog, out_uri=OUT, settings=SETTINGS, cache_dir=cache_dir)
    assert queued == len(videos) + 3  # the sample, its broken file, gone.mp4, unreachable.mp4
    s3.client.delete_object(Bucket=ARCHIVE_BUCKET, Key="archive/extra/gone.mp4")
    result = drive_job(job_id, catalog=catalog, executor=LocalExecutor(), cache_dir=cache_dir)
    return BucketRun(indexed, catalog, result, db)


def tracks_by_video(catalog: Catalog, prefix: str) -> dict[str, list[tuple[float, float, int]]]:
    with catalog.session() as s:
        rows = s.execute(select(Video.path, Track.start_s, Track.end_s, Track.n_faces)
                         .join(Track, Track.video_id == Video.id)).all()
    out: dict[str, list[tuple[float, float, int]]] = {}
    for path, start, end, n in rows:
        out.setdefault(path.removeprefix(prefix), []).append((round(start, 6), round(end, 6), n))
    return {k: sorted(v) for k, v in out.items()}


def faces_by_video(table: pa.Table, prefix: str) -> dict[str, int]:
    counts = table.group_by("video").aggregate([("video", "count")]).to_pylist()
    return {r["video"].removeprefix(prefix): r["video_count"] for r in counts}


def test_the_bucket_archive_gives_the_same_tracks_as_the_local_one(bucket_indexed: BucketRun) -> None:
    videos, out, local_catalog, _ = bucket_indexed.local
    local_root = str(Path(videos[0].path).parent) + "/"
    local = tracks_by_video(local_catalog, local_root)
    remote = tracks_by_video(bucket_indexed.catalog, ARCHIVE + "/")
    assert local and remote == local
    local_faces = faces_by_video(ds.dataset(out / "faces", format="parquet", schema=FACES).to_table(), local_root)
    fs, path = storage.filesystem(OUT)
    remote_faces = faces_by_video(ds.dataset(f"{path}/faces", filesystem=fs, format="parquet",
                                             schema=FACES).to_table(), ARCHIVE + "/")
    assert sum(local_faces.values()) > 0 and remote_faces == local_faces


def test_one_bad_object_fails_alone_with_its_reason(bucket_indexed: BucketRun) -> None:
    s = bucket_indexed.result.summary
    videos = bucket_indexed.local[0]
    assert s.status == "done" and s.done == len(videos) and s.failed == 3
    errors = {f["path"].removeprefix(ARCHIVE + "/"): f["error"] for f in s.failures}
    assert set(errors) == {"broken.mp4", "extra/gone.mp4", "extra/unreachable.mp4"}
    assert "does not exist" in errors["extra/gone.mp4"]
    assert "network failure" in errors["extra/unreachable.mp4"]
    assert f"gave up after {storage.READ_RETRIES} attempts" in errors["extra/unreachable.mp4"]
    assert "not a readable video" in errors["broken.mp4"]
    scratch = storage.scratch().dir
    assert not list(scratch.iterdir())  # every staged video was removed


def test_results_in_the_bucket_are_whole_and_readable_by_pyarrow_and_duckdb(s3: S3,
                                                                            bucket_indexed: BucketRun) -> None:
    import duckdb

    videos = bucket_indexed.local[0]
    keys = s3.keys(OUT)
    for table in ("faces", "persons", "tracks", "person_tracks"):
        assert len([k for k in keys if k.startswith(f"out/{table}/") and k.endswith(".parquet")]) == len(videos)
    assert not [k for k in keys if "/_staging/" in k and k[-1] != "/"]
    fs, path = storage.filesystem(OUT)
    tracks = ds.dataset(f"{path}/tracks", filesystem=fs, format="parquet", schema=TRACKS)
    with bucket_indexed.catalog.session() as s:
        n_sql = len(s.scalars(select(Track.id)).all())
    assert tracks.count_rows() == n_sql > 0
    thumbs = tracks.to_table(columns=["thumbnail"]).column("thumbnail").to_pylist()
    with fs.open_input_stream(f"{path}/{thumbs[0]}") as f:
        assert f.read(2) == b"\xff\xd8"
    faces = ds.dataset(f"{path}/faces", filesystem=fs, format="parquet", schema=FACES)
    per_video = duckdb.sql("SELECT video, count(*) AS n FROM faces GROUP BY video ORDER BY video").fetchall()
    assert dict(per_video) == faces_by_video(faces.to_table(), "")


def test_a_rerun_adds_nothing(s3: S3, bucket_indexed: BucketRun, cache_dir: Path) -> None:
    before = s3.keys(OUT)
    again = run_job(ARCHIVE, catalog=bucket_indexed.catalog, out_uri=OUT, settings=SETTINGS,
                    executor=LocalExecutor(), cache_dir=cache_dir)
    assert again.summary.done == 0 and again.summary.failed == 0
    assert again.summary.skipped == len(bucket_indexed.local[0]) + 2  # gone.mp4 is no longer listed
    assert s3.keys(OUT) == before


def test_search_with_results_in_the_bucket(bucket_indexed: BucketRun, cache_dir: Path, tmp_path: Path) -> None:
    from engines.photos import photo_path
    from vidx.cli import cli

    report = tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), "search", "--photo", str(photo_path("obama2")),
                                   "--db", bucket_indexed.db, "--out", OUT, "--device", "cpu", "--json",
                                   "--html", str(report)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert hits and all(h["video"].startswith(ARCHIVE + "/") for h in hits)
    fs, _ = storage.filesystem(OUT)
    for h in hits:
        assert h["thumbnail"].startswith(OUT + "/thumbnails/")
        assert fs.get_file_info(storage.filesystem(h["thumbnail"])[1]).type == pafs.FileType.File
    page = report.read_text()
    assert page.count("data:image/jpeg;base64,") >= len(hits)  # thumbnails inlined from the bucket


def test_listing_is_recursive_by_extension_and_fingerprints_without_downloading(s3: S3,
                                                                                 tmp_path: Path) -> None:
    prefix = "s3://vidx-archive/listing"
    body = os.urandom(3 << 20)
    s3.put(f"{prefix}/a.mp4", body)
    s3.put(f"{prefix}/deeper/b.MKV", b"x" * 1000)
    s3.put(f"{prefix}/readme.txt", b"text")
    s3.put(f"{prefix}/.hidden.mp4", b"x")
    found, skipped = scan_archive(prefix)
    assert [f.path for f in found] == [f"{prefix}/a.mp4", f"{prefix}/deeper/b.MKV"] and not skipped
    assert found[0].size == len(body)

    down = s3.proxy.bytes_down
    first = video_fingerprint(found[0])
    assert s3.proxy.bytes_down - down < 64 << 10  # a HEAD, not the 3 MiB body
    s3.put(f"{prefix}/a.mp4", body)  # the same bytes again: a new mtime, the same ETag
    assert video_fingerprint(VideoFile(found[0].path, len(body), 0.0)) == first
    s3.put(f"{prefix}/a.mp4", body[::-1])  # other bytes of the same size
    assert video_fingerprint(found[0]) != first

    listed = tmp_path / "videos.txt"
    listed.write_text(f"{prefix}/deeper/b.MKV\n{prefix}/missing.mp4\n")
    found, skipped = scan_archive(listed)
    assert [f.path for f in found] == [f"{prefix}/deeper/b.MKV"]
    assert skipped == [(f"{prefix}/missing.mp4", "no such object")]
    s3.put(f"{prefix}/list.txt", b"deeper/b.MKV\n# a comment\n")  # a list file in the bucket, relative names
    assert [f.path for f in scan_archive(f"{prefix}/list.txt")[0]] == [f"{prefix}/deeper/b.MKV"]


def test_a_broken_connection_mid_download_is_resumed(s3: S3, tmp_path: Path) -> None:
    body = os.urandom(1 << 20)
    uri = "s3://vidx-archive/net/flaky.mp4"
    s3.put(uri, body)
    cut = Cut(b"flaky.mp4", after=200_000, times=2)
    s3.proxy.cuts.append(cut)
    assert storage.download(uri, tmp_path / "v.mp4") == len(body)
    assert cut.done == 2 and (tmp_path / "v.mp4").read_bytes() == body

    s3.proxy.cuts.append(Cut(b"dead.mp4", after=100_000))
    s3.put("s3://vidx-archive/net/dead.mp4", body)
    with pytest.raises(VideoError) as err:
        storage.download("s3://vidx-archive/net/dead.mp4", tmp_path / "d.mp4")
    assert err.value.path == "s3://vidx-archive/net/dead.mp4"
    assert "network failure" in err.value.message and "gave up after" in err.value.message


def test_no_half_written_object_is_ever_visible(s3: S3) -> None:
    store = OutputStore(f"s3://{OUT_BUCKET}/atomic")
    big = os.urandom(12 << 20)  # a multipart upload, staged then copied into place
    store.write_bytes("faces/big.parquet", big)
    assert store.read_bytes("faces/big.parquet") == big
    small = os.urandom(1000)
    store.write_bytes("thumbnails/small.jpg", small)
    assert store.read_bytes("thumbnails/small.jpg") == small

    s3.proxy.cuts.append(Cut(b"broken", after=2 << 20, direction="up"))
    for rel, data in (("faces/broken-big.parquet", big), ("faces/broken-small.parquet", os.urandom(3 << 20))):
        with pytest.raises(OSError):
            store.write_bytes(rel, data)
        assert not store.exists(rel)
    # pyarrow leaves an empty `_staging/` folder marker when it deletes the folder's last object; no data.
    left = [k for k in s3.keys(f"s3://{OUT_BUCKET}/atomic") if ("broken" in k or "_staging" in k) and k[-1] != "/"]
    assert not left


def test_a_missing_bucket_or_denied_access_is_a_clear_error(s3: S3, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from vidx.cli import cli

    with pytest.raises(storage.StorageError) as listing:
        scan_archive("s3://no-such-bucket/archive")
    assert listing.value.path == "s3://no-such-bucket/archive" and "bucket does not exist" in listing.value.message
    with pytest.raises(OutputError) as output:
        OutputStore("s3://no-such-bucket/out").check()
    assert output.value.path == "s3://no-such-bucket/out" and "bucket does not exist" in output.value.message
    res = CliRunner().invoke(cli, ["index", "s3://no-such-bucket/archive", "--out", OUT, "--db",
                                   f"sqlite:///{tmp_path / 'i.sqlite'}", "--device", "cpu"])
    assert isinstance(res.exception, storage.StorageError), res.output

    import boto3
    import requests

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    storage._s3.cache_clear()  # credentials are read when a file system is made
    requests.post(f"{s3.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        with pytest.raises(storage.StorageError) as denied:
            scan_archive(ARCHIVE)
        assert denied.value.path == ARCHIVE and "access denied" in denied.value.message
        with pytest.raises(OutputError) as out_denied:
            OutputStore(OUT).check()
        assert "access denied" in out_denied.value.message
    finally:
        requests.post(f"{s3.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
        storage._s3.cache_clear()


def test_scratch_space_is_bounded(tmp_path: Path) -> None:
    import threading
    import time

    space = storage.Scratch(tmp_path, budget=1000)
    with pytest.raises(VideoError) as err, space.reserve(1001, "s3://b/huge.mp4"):
        pass
    assert err.value.path == "s3://b/huge.mp4" and "scratch space budget" in err.value.message
    order: list[str] = []

    def second() -> None:
        with space.reserve(600, "s3://b/b.mp4"):
            order.append("b")

    with space.reserve(700, "s3://b/a.mp4"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("a done")  # b waited for a: 700 + 600 would overflow the budget
    waiter.join(5)
    assert order == ["a done", "b"] and space.used == 0
