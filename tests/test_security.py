"""Security properties, checked on the code and on hostile inputs:

- the packages pass ruff's security rules: SQL with bound parameters only, nothing from outside unpickled,
  no unsafe YAML, no numpy object arrays;
- archive scans do not escape the archive through symlinks, files or folders;
- photos given to search are size-limited before they are decoded, and decoded by Pillow only.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalog.archive import scan_archive
from engines.errors import ImageError
from engines.images import MAX_IMAGE_BYTES, load_rgb

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vidx", "jobs", "indexer", "engines", "schemas")
BAD_CODE = """\
import pickle

import yaml
from sqlalchemy import text


def f(conn, p, tid, cols, c, b, s):
    conn.execute(text(f"SELECT * FROM videos WHERE path = '{p}'"))
    conn.exec_driver_sql("DELETE FROM tracks WHERE id = %s" % tid)
    conn.execute(text("SELECT " + cols + " FROM videos"))
    conn.execute(text("SELECT {} FROM t".format(c)))
    yaml.load(s)
    return pickle.loads(b)
"""


def package_sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 30  # the checks look at the real code
    return files


def ruff_security(*paths: Path) -> list[str]:
    """Findings of ruff's security rules (flake8-bandit, `S`) with the project's configuration."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "--no-cache",
                           *map(str, paths)], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return [line for line in proc.stdout.splitlines() if ": S" in line]


def test_the_security_rules_catch_what_they_look_for(tmp_path: Path) -> None:
    """SQL built by formatting (S608), unpickling (S301) and unsafe YAML (S506) are flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_CODE)
    codes = [line.split(": ")[1].split()[0] for line in ruff_security(bad)]
    assert sorted(codes) == ["S301", "S506", "S608", "S608", "S608", "S608"], codes


def test_the_code_passes_the_security_rules() -> None:
    """Every SQL statement uses bound parameters, nothing from outside is unpickled, and so on: ruff's `S` rules
    (configured in pyproject.toml, with the reasons for what they leave out) find nothing in the packages."""
    found = ruff_security(*(REPO / pkg for pkg in PACKAGES))
    assert found == [], "\n".join(found)
    numpy_pickles = [str(p.relative_to(REPO)) for p in package_sources() if "allow_pickle=True" in p.read_text()]
    assert numpy_pickles == []  # numpy's own unpickling, which the S rules do not look at


def test_archive_scans_stay_inside_the_archive(tmp_path: Path) -> None:
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    (archive / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (archive / "sub" / "ok.mp4").write_bytes(b"v" * 10)
    (elsewhere / "private.mp4").write_bytes(b"p" * 10)
    (archive / "to_file.mp4").symlink_to(elsewhere / "private.mp4")
    (archive / "to_folder").symlink_to(elsewhere, target_is_directory=True)
    (archive / "sub" / "relative.mp4").symlink_to(Path("..") / ".." / "elsewhere" / "private.mp4")
    (archive / "inside.mp4").symlink_to(archive / "sub" / "ok.mp4")
    (archive / "passwd.mp4").symlink_to("/etc/passwd")
    found, skipped = scan_archive(archive)
    assert [f.path for f in found] == [(archive / "sub" / "ok.mp4").resolve()]
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {"to_file.mp4", "to_folder", "relative.mp4", "passwd.mp4"}
    assert all("points outside the archive" in why for why in reasons.values())
    # Allowed on request (files only): the link is followed to the file it names.
    allowed, _ = scan_archive(archive, follow_symlinks=True)
    assert (elsewhere / "private.mp4").resolve() in {f.path for f in allowed}


def test_oversized_photo_files_are_refused_before_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as f:  # sparse: no disk space used, but stat says it is too big
        f.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(ImageError, match="are refused"):
        load_rgb(huge)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "JPEG"])
def test_pixel_bombs_are_refused_from_the_header(tmp_path: Path, fmt: str) -> None:
    """Small files that would decode to gigabytes: refused from the header's size, before decoding."""
    bomb = tmp_path / f"bomb.{fmt.lower()}"
    Image.new("L" if fmt != "GIF" else "P", (12_000, 9_000)).save(bomb, format=fmt)
    assert bomb.stat().st_size < 3_000_000
    with pytest.raises(ImageError, match="over the limit"):
        load_rgb(bomb)


def test_a_forged_header_cannot_allocate_a_huge_image(tmp_path: Path) -> None:
    """A JPEG whose header claims 65000x65000 pixels but holds almost no data."""
    good = tmp_path / "small.jpg"
    Image.new("RGB", (16, 16)).save(good, format="JPEG")
    data = bytearray(good.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (65000).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    forged = tmp_path / "forged.jpg"
    forged.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="over the limit"):
        load_rgb(forged)


def test_other_formats_in_disguise_are_rejected(tmp_path: Path) -> None:
    svg = tmp_path / "photo.jpg"
    svg.write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>')
    with pytest.raises(ImageError, match="not a readable image"):
        load_rgb(svg)
    pickle_like = tmp_path / "photo.png"
    pickle_like.write_bytes(b"\x80\x04\x95" + os.urandom(200))  # a pickle header: never unpickled
    with pytest.raises(ImageError, match="not a readable image"):
        load_rgb(pickle_like)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path).shape == (40, 20, 3)


def test_search_reads_photos_only_through_the_safe_loader() -> None:
    """Every Image.open in the package is inside engines/images.py (one place that enforces the limits)."""
    opens = [f"{p.relative_to(REPO)}:{n.lineno}" for p in package_sources()
             for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "open"
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "Image"]
    assert opens and all(o.startswith("engines/images.py:") for o in opens), opens
