"""The forms of a converted model that GPU sessions run, made once and cached beside the model.

A GPU worker runs rewritten copies of a model's graph: FP16 (engines/convert/fp16.py), with some
depthwise-separable pairs folded (separable.py), and for its quick sessions with the depthwise convolutions as
ordinary ones (depthwise.py). Made afresh, they cost every worker process the `onnx` package's import and the
rewrites on its way to its first video (about 1 s on a 2-core CPU: docs/performance.md, "GPU: how a worker
starts"), so they are written whole (engines.sources.write_atomic) under `<models>/forms/` on first use and read from
there afterwards (into memory: about 37 MB for a worker's three models, each checked against the sha256 its set's
record holds), without importing `onnx`.

A set of forms is named by what it is made from and how: the model's hash, the rewriting modules' code and the
`onnx` version (which, changed, remove the model's earlier sets: a process that holds them keeps its copy), then the
source graph's file, the rewrites asked for and the fold rule's code (sets for other options stay: `vidx bench` and
other commands may ask for them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from engines.sources import write_atomic

if TYPE_CHECKING:
    from engines.convert.separable import FoldRule
    from engines.zoo import ModelFile

log = logging.getLogger(__name__)
REWRITERS = ("forms.py", "fp16.py", "separable.py", "depthwise.py")
"""The modules (this one and those beside it) whose code shapes the forms."""


@dataclass(frozen=True)
class GraphForms:
    """The graphs a model's sessions open: `fastest` for the fastest sessions, `quick` for the quick ones (the
    same object where nothing differs), and how many depthwise-separable pairs both have folded. Each is a
    serialised graph held in memory (a session may open it again long after, when it meets a new input shape,
    whatever has become of the cache meanwhile), or the source file's path where nothing was rewritten."""

    fastest: str | bytes
    quick: str | bytes
    folded: int


def graph_forms(model: ModelFile, source: str, *, fp16: bool, dense: bool, fold: FoldRule | None) -> GraphForms:
    """The forms of `source` (the model's graph, or a copy made from it) for these options, from the cache
    or made now. With no rewrite asked for, `source` itself."""
    if not (fp16 or dense or fold):
        return GraphForms(source, source, 0)
    folder = model.path.parent / "forms"
    made_by = _made_by(model)
    stem = f"{model.spec.name}-{made_by}-{_options(source, fp16=fp16, dense=dense, fold=fold)}"
    try:
        made = json.loads((folder / f"{stem}.json").read_text())
        fastest = _read(folder, made["fastest"], made["sha256"]) if made["fastest"] else source
        quick = fastest if made["quick"] == made["fastest"] else _read(folder, made["quick"], made["sha256"])
        return GraphForms(fastest, quick, int(made["folded"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not made yet, or left unreadable or damaged: made again below
    forms, cached = _make(source, folder, stem, fp16=fp16, dense=dense, fold=fold)
    if cached:  # sets of an earlier model or rewriting code are never used again
        for old in folder.glob(f"{model.spec.name}-*"):
            if not old.name.startswith(f"{model.spec.name}-{made_by}-"):
                with contextlib.suppress(OSError):
                    old.unlink()
    return forms


def _read(folder: Path, name: str, sha256: dict[str, str]) -> bytes:
    """A cached form, checked against the sha256 its record holds (ValueError where it differs)."""
    data = (folder / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256[name]:
        log.warning("the cached GPU form %s is damaged: made again", folder / name)
        raise ValueError(name)
    return data


def _made_by(model: ModelFile) -> str:
    """Names the model and the code that rewrites it (this module's too)."""
    return hashlib.sha256(f"{model.provenance.onnx_sha256} {_rewriting_code()}".encode()).hexdigest()[:12]


@functools.cache
def _rewriting_code() -> str:
    """A digest of the rewriting modules' sources and the onnx package's version (read once a process)."""
    here = Path(__file__).parent
    digest = hashlib.sha256(f"onnx {version('onnx')}".encode())
    for name in REWRITERS:
        try:
            digest.update((here / name).read_bytes())
        except OSError:  # installed without its sources: the package's version stands for the code
            digest.update(f"{name} of vidx {version('vidx')}".encode())
    return digest.hexdigest()


def _options(source: str, *, fp16: bool, dense: bool, fold: FoldRule | None) -> str:
    """Names the source graph's file and the rewrites asked for."""
    rule = "no fold"
    if fold is not None:
        try:
            rule = inspect.getsource(fold)
        except (OSError, TypeError):  # no source to read: its name stands for it
            rule = f"{fold.__module__}.{fold.__qualname__}"
    return hashlib.sha256(f"{Path(source).name} fp16={fp16} dense={dense} {rule}".encode()).hexdigest()[:8]


def _make(source: str, folder: Path, stem: str, *, fp16: bool, dense: bool,
          fold: FoldRule | None) -> tuple[GraphForms, bool]:
    """The forms made now, and whether they were cached."""
    import onnx

    from engines.convert import depthwise
    from engines.convert.fp16 import to_float16
    from engines.convert.separable import fold_separable, separable_pairs

    proto = onnx.load(source)
    folded = 0
    if fold is not None:
        folded = sum(fold(*pair) for pair in separable_pairs(proto))
        proto = fold_separable(proto, fold)
    if fp16:
        proto = to_float16(proto)
    fastest_name = f"{stem}-fastest.onnx" if fp16 or folded else ""
    fastest: str | bytes = proto.SerializeToString() if fastest_name else source
    quick_name, quick = fastest_name, fastest
    if dense and depthwise.has_depthwise(proto):
        quick_name, quick = f"{stem}-quick.onnx", depthwise.dense_depthwise(proto).SerializeToString()
    forms = GraphForms(fastest, quick, folded)
    written = {name: data for name, data in ((fastest_name, fastest), (quick_name, quick))
               if name and isinstance(data, bytes)}
    try:
        for name, data in written.items():
            write_atomic(folder / name, data)
        made = {"fastest": fastest_name, "quick": quick_name, "folded": folded,
                "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in written.items()}}
        write_atomic(folder / f"{stem}.json", json.dumps(made, indent=2).encode())  # last: the set is whole
    except OSError as exc:  # a read-only or full cache: made again by the next process
        log.warning("cannot cache the GPU forms of %s in %s (%s): made again by each process", source, folder, exc)
        return forms, False
    return forms, True
