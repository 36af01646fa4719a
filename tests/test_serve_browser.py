"""The web app in a real browser (headless Chromium driven by chromedriver) against a real server on 127.0.0.1:
search by an uploaded photo, play the hit at its moment, name a face group."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from catalog.db import Catalog, default_db_url
from engines.photos import photo_path
from jobs.runner import JobResult
from samples.archive import SampleVideo
from vidx.cli import cli
from web.app import create_app

Indexed = tuple[list[SampleVideo], Path, Catalog, JobResult]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 60.0  # generous: a loaded 2-core machine; every wait ends as soon as its condition holds


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile and no network of its own. Skipped where it is not installed,
    except in CI (CI=true), where that is a failure."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        why = "needs chromium and chromedriver (apt-get install -y chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: it {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """The app served by uvicorn on a free port of 127.0.0.1, in a thread; its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def screenshot_on_failure(driver: Any, folder: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shot = folder / "failure.png"
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(shot))
            print(f"screenshot of the page at the failure: {shot} ({driver.current_url})")
        raise


def test_search_play_and_name_in_the_browser(browser: Any, indexed: Indexed, private_out: Callable[[str], Path],
                                             cache_dir: Path, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    videos, _, _, _ = indexed
    out = private_out("serve-browser")
    catalog = Catalog(default_db_url(out))
    app = create_app(str(out), catalog, cache_dir=cache_dir, device="cpu")
    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05,  # pages reload after a change: elements go stale
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    expected = {v.name for v in videos for a in v.appearances if a.person == "obama"}
    with running_server(app) as base, screenshot_on_failure(browser, tmp_path):
        # Search by a photo of a man who is in two videos, from another photo than theirs.
        browser.get(f"{base}/search")
        browser.find_element(By.ID, "photo-input").send_keys(str(photo_path("obama2", cache_dir)))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".video-group .hit"))
        groups = browser.find_elements(By.CSS_SELECTOR, ".video-group")
        assert {g.get_attribute("data-video") for g in groups} == expected
        assert all(img.get_attribute("naturalWidth") != "0" for img in wait.until(  # thumbnails loaded
            lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, ".hit img") if i.get_property("complete")]))

        # Click the hit in the H.264 video (headless Chromium has no HEVC decoder): it plays from its start.
        hit = browser.find_element(By.CSS_SELECTOR, '.video-group[data-video="meeting_h264.mp4"] .hit')
        start, track = float(hit.get_attribute("data-start")), hit.get_attribute("data-track")
        hit.click()
        playing_at = wait.until(lambda d: d.execute_script(
            "const v = document.getElementById('player');"
            "return !v.paused && v.readyState >= 2 && v.currentTime > 0 ? v.currentTime : null;"))
        assert abs(playing_at - start) < 1.0, (playing_at, start)
        assert browser.execute_script("return document.getElementById('player').getAttribute('src')").startswith(
            "/media/videos/")

        # Group the faces, then name the group that holds the face just played.
        browser.get(f"{base}/people")
        browser.find_element(By.ID, "recluster").click()
        card_css = f".cluster-card:has(.chips[data-tracks~='{track}'])"
        card = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, card_css))[0]
        card.find_element(By.CSS_SELECTOR, "input[name=name]").send_keys("Barack Obama")
        card.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: [c for c in d.find_elements(By.CSS_SELECTOR, card_css)
                              if c.find_element(By.CSS_SELECTOR, ".cluster-name").text == "Barack Obama"])
        named = [p.get_attribute("data-person") for p in browser.find_elements(By.CSS_SELECTOR, ".person-card")]
        assert named == ["Barack Obama"]
    listed = CliRunner().invoke(cli, ["person", "list", "--out", str(out), "--json"])
    assert [p["name"] for p in json.loads(listed.stdout)] == ["Barack Obama"]
    catalog.close()
