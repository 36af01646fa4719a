"""Security properties, checked on the code and on hostile inputs:

- every SQL statement is built with bound parameters (no f-strings or formatting into SQL text);
- nothing from outside is unpickled (no pickle, marshal, unsafe YAML, numpy object arrays);
- archive scans do not escape the archive through symlinks, files or folders;
- photos given to search are size-limited before they are decoded, and decoded by Pillow only.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageError
from engines.images import MAX_IMAGE_BYTES, load_rgb
from jobs.archive import scan_archive

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vidx", "jobs", "indexer", "engines", "schemas")
SQL_CALLS = {"text", "exec_driver_sql", "execute", "executemany", "executescript", "literal_column",
             "from_statement", "TextClause"}
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("marshal", "load"),
              ("marshal", "loads"), ("shelve", "open"), ("torch", "load"), ("pd", "read_pickle"),
              ("pandas", "read_pickle")}


def package_sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 30  # the scan looks at the real code
    return files


def _name(func: ast.expr) -> tuple[str | None, str | None]:
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    if isinstance(func, ast.Name):
        return None, func.id
    return None, None


def _formatted(node: ast.expr) -> bool:
    """SQL text made by formatting: an f-string with values, `%` or `+` on strings, or `.format()`."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return any((isinstance(side, ast.Constant | ast.JoinedStr) and isinstance(getattr(side, "value", ""), str))
                   or _formatted(side) for side in (node.left, node.right))
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join")


def formatted_sql(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and node.args:
            _, name = _name(node.func)
            if name in SQL_CALLS and _formatted(node.args[0]):
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def unsafe_loads(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cloudpickle", "dill", "marshal", "shelve") for n in names):
                found.append(f"{filename}:{node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        owner, name = _name(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if (owner, name) in UNPICKLERS:
            found.append(f"{filename}:{node.lineno}: {owner}.{name}")
        if name == "load" and owner in ("np", "numpy"):
            flag = keywords.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"{filename}:{node.lineno}: numpy.load(allow_pickle=True)")
        if name in ("load", "load_all") and owner == "yaml" and "Loader" not in keywords:
            found.append(f"{filename}:{node.lineno}: yaml.load without a safe Loader")
    return found


def test_the_checks_catch_what_they_look_for() -> None:
    """The scanners below are only worth something if they flag real mistakes."""
    bad_sql = ('conn.execute(text(f"SELECT * FROM videos WHERE path = \'{p}\'"))\n'
               'conn.exec_driver_sql("DELETE FROM tracks WHERE id = %s" % tid)\n'
               's.execute(text("SELECT " + cols + " FROM videos"))\n'
               's.execute(text("SELECT {} FROM t".format(c)))\n')
    assert len(formatted_sql(bad_sql, "bad.py")) == 4
    good_sql = ('conn.execute(text("SELECT * FROM videos WHERE path = :p"), {"p": p})\n'
                'conn.execute(text(f"SELECT 1"))\n')
    assert formatted_sql(good_sql, "good.py") == []
    bad_loads = "import pickle\nx = pickle.loads(b)\nnp.load(f, allow_pickle=True)\nyaml.load(s)\n"
    assert len(unsafe_loads(bad_loads, "bad.py")) == 4
    assert unsafe_loads("np.load(f)\nyaml.load(s, Loader=yaml.SafeLoader)\njson.loads(s)\n", "good.py") == []


def test_every_sql_statement_uses_bound_parameters() -> None:
    found = [hit for p in package_sources() for hit in formatted_sql(p.read_text(), str(p.relative_to(REPO)))]
    assert found == [], "SQL built by string formatting (use bound parameters):\n" + "\n".join(found)


def test_nothing_untrusted_is_unpickled() -> None:
    found = [hit for p in package_sources() for hit in unsafe_loads(p.read_text(), str(p.relative_to(REPO)))]
    assert found == [], "unsafe deserialisation:\n" + "\n".join(found)


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
             and _name(n.func) == ("Image", "open")]
    assert opens and all(o.startswith("engines/images.py:") for o in opens), opens
