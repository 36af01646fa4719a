"""What a new user meets first: a command pointed at no index, a mistyped --db, a database server that is down
(each must end in one clear line naming the place and the reason, a non-zero exit code, and nothing created),
and output read from a log or a pipe.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from catalog.db import Catalog
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from schemas.errors import VidxError
from vidx.cli import cli

Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_clear_error(result: Result, *words: str) -> None:
    """The CLI prints a VidxError as one `error: ...` line with its exit code (vidx.cli.main)."""
    assert isinstance(result.exception, VidxError), repr(result.exception)
    assert result.exception.exit_code != 0
    text = result.exception.describe()
    assert all(w in text for w in words), text


def test_search_without_an_index_refuses_and_creates_nothing(tmp_path: Path, cache_dir: Path) -> None:
    photo = str(photo_path("obama2", cache_dir))
    result = run("search", "--photo", photo, "--out", str(tmp_path / "vidx-data"))
    assert_clear_error(result, str(tmp_path / "vidx-data" / "index.sqlite"), "no vidx index")
    typo = tmp_path / "nonexistent" / "dir" / "x.sqlite"
    result = run("search", "--photo", photo, "--db", f"sqlite:///{typo}")
    assert_clear_error(result, str(typo), "no vidx index")
    for args in (["people", "cluster"], ["job", "list"], ["person", "list"], ["job", "status"]):
        assert_clear_error(run(*args, "--db", f"sqlite:///{typo}"), str(typo))
    assert list(tmp_path.iterdir()) == []  # neither the default folder nor the typo'd one was made


def test_index_does_not_create_the_folder_of_a_mistyped_db(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    typo = tmp_path / "nonexistent" / "x.sqlite"
    result = run("index", str(tmp_path / "archive"), "--db", f"sqlite:///{typo}", "--out", str(tmp_path / "out"))
    assert_clear_error(result, str(typo), "does not exist")
    assert not typo.parent.exists()


@pytest.mark.parametrize(("url", "words"), [
    ("postgres://user@localhost/db", ("postgres://user@localhost/db", "postgresql+psycopg://")),
    ("not-a-url", ("not-a-url", "not a database URL")),
])
def test_a_bad_db_url_is_one_clear_line(url: str, words: tuple[str, ...]) -> None:
    assert_clear_error(run("job", "list", "--db", url), *words)


def test_a_database_server_that_is_down_fails_at_once(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://vidx@127.0.0.1:1/vidx"  # port 1: nothing listens, the connection is refused
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        result = run("search", "--person", "Anyone", "--db", url)
    assert_clear_error(result, "127.0.0.1", "cannot connect")
    assert time.monotonic() - started < 10
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # no retry chatter


def test_tables_are_not_cut_when_stdout_is_not_a_terminal(indexed: Indexed, private_out: Callable[[str], Path]) -> None:
    out = private_out("wide")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    listed = subprocess.run([sys.executable, "-m", "vidx", "job", "list", "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(subprocess.run([sys.executable, "-m", "vidx", "job", "list", "--out", str(out), "--json"],
                                     env=env, capture_output=True, text=True, timeout=120).stdout)
    for job in jobs:  # every row whole, on one line: the archive path and the full creation time
        assert any(job["archive"] in line and job["created_at"] in line for line in listed.stdout.splitlines()), \
            listed.stdout
