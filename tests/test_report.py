"""The HTML report: self-contained, names escaped, and rendered for real in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog.db import Catalog
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from search.query import Hit
from search.report import render_report
from vidx.cli import cli

Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM after Chromium loaded the page (headless, no network, a fresh profile)."""
    proc = subprocess.run([CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
def test_report_shows_the_hits_in_chromium(indexed: Indexed, cache_dir: Path, tmp_path: Path) -> None:
    _, out, _, _ = indexed
    page = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["search", "--photo", str(photo_path("obama2", cache_dir)), "--out", str(out),
                                      "--device", "cpu", "--html", str(page), "--json"])
    assert result.exit_code == 0, result.output
    import json

    hits = json.loads(result.stdout)
    assert len(hits) == 2
    text = page.read_text()
    assert "src=\"file:" not in text and "http" not in text  # self-contained: nothing to fetch
    dom = chromium_dom(page, tmp_path / "profile")
    cards = re.findall(r'<div class="hit" data-rank="(\d+)" data-track="([\d-]+)">', dom)
    assert [t for _, t in cards] == [h["track_id"] for h in hits]
    assert dom.count('src="data:image/jpeg;base64,') == len(hits) + 1  # the query face and each thumbnail
    for h in hits:
        assert Path(h["video"]).name in dom
        assert f'{Path(h["video"]).resolve().as_uri()}#t={h["start_s"]:.2f},{h["end_s"]:.2f}' in dom
    assert dom.count('class="timeline"') == len({h["video"] for h in hits})
    assert dom.count('class="seg"') == len(hits)


def test_names_are_escaped(tmp_path: Path) -> None:
    video = tmp_path / "<img src=x onerror=alert(1)>&.mp4"
    hit = Hit(video=str(video), start_s=1.0, end_s=2.0, score=0.9, distance=0.4, track_id="1-5", track_ids=["1-5"],
              thumbnail=None, video_id=1, duration_s=10.0, person='<b>"Bob" & Al</b>')
    page = render_report([hit], out_root=tmp_path, person="<i>Bob</i>")
    assert "<img src=x" not in page and "<b>" not in page and "<i>Bob" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;.mp4" in page and "&lt;i&gt;Bob&lt;/i&gt;" in page
    assert "#t=1.00,2.00" in page and "left:10.00%" in page and "width:10.00%" in page
