"""Input dimensions fixed for a runtime session that sees one input shape.

With every input dimension known, ONNX Runtime folds the graph's shape arithmetic into constants when it
loads it (the person detector computes its grid from its feature maps' shapes: Shape, Gather, Range). Left in,
those nodes run on the CPU provider between the GPU's kernels, and a run that leaves the GPU cannot be
recorded as a CUDA graph (engines/cuda_graphs.py). A session fixes them by name through ONNX Runtime's
free-dimension overrides (free_dimension_sizes); with_input_shapes makes a copy of the graph with them fixed (for
the `onnx` package's own shape inference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of `model` whose inputs named in `shapes` have those dimensions. Raises ValueError for an input
    the graph lacks, a rank that differs, or a dimension the graph fixes to another size."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = {i.name: i for i in out.graph.input}
    for name, shape in shapes.items():
        if name not in inputs:
            raise ValueError(f"the graph has no input {name!r}; inputs are {sorted(inputs)}")
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(f"input {name!r} has {len(dims)} dimensions, not {len(shape)}")
        for i, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise ValueError(f"input {name!r} has dimension {i} fixed to {dim.dim_value}, not {size}")
            dim.Clear()
            dim.dim_value = int(size)
    return out


def free_dimension_sizes(declared: Mapping[str, Sequence[int | str | None]],
                         shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The size of each named free dimension of a graph's inputs (`declared`: each input's dimensions as ONNX
    Runtime lists them, a size, a name or None) for inputs of these shapes: ONNX Runtime's free-dimension
    overrides (SessionOptions.add_free_dimension_override_by_name) then fix them as with_input_shapes would,
    without a copy of the graph. Raises ValueError for an input the graph lacks, a rank that differs, a fixed
    dimension of another size, a free dimension without a name, or a name given two sizes."""
    sizes: dict[str, int] = {}
    for name, shape in shapes.items():
        if name not in declared:
            raise ValueError(f"the graph has no input {name!r}; inputs are {sorted(declared)}")
        dims = declared[name]
        if len(dims) != len(shape):
            raise ValueError(f"input {name!r} has {len(dims)} dimensions, not {len(shape)}")
        for i, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if isinstance(dim, int):
                if dim != size:
                    raise ValueError(f"input {name!r} has dimension {i} fixed to {dim}, not {size}")
            elif dim is None:
                raise ValueError(f"input {name!r} has dimension {i} free without a name: it cannot be fixed by name")
            elif sizes.setdefault(dim, int(size)) != size:
                raise ValueError(f"dimension {dim!r} is {sizes[dim]} in one input and {size} in {name!r}")
    return sizes
