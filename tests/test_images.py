"""Photos given to vidx: clear errors for what is not a usable image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageError
from engines.images import load_rgb


def test_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text, not a JPEG")
    with pytest.raises(ImageError, match="not a readable image") as err:
        load_rgb(bad)
    assert str(bad) in err.value.describe()


def test_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(ImageError, match="empty"):
        load_rgb(empty)
    with pytest.raises(ImageError, match="no such image"):
        load_rgb(tmp_path / "missing.png")


def test_pixel_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 10000x10000 PNG compresses to a few hundred KB but would take 300 MB decoded."""
    bomb = tmp_path / "bomb.png"
    Image.new("L", (10_000, 10_000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="over the limit"):
        load_rgb(bomb, max_pixels=50_000_000)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_rgb(cut)


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    for mode in ("L", "RGBA", "P"):
        p = tmp_path / f"x_{mode}.png"
        Image.new(mode, (40, 30)).save(p)
        assert load_rgb(p).shape == (30, 40, 3)
