"""A copy of an ONNX graph whose inputs have fixed dimensions, for a runtime session that sees one input shape.

With every input dimension known, ONNX Runtime folds the graph's shape arithmetic into constants when it
loads it (the person detector computes its grid from its feature maps' shapes: Shape, Gather, Range). Left in,
those nodes run on the CPU provider between the GPU's kernels, and a run that leaves the GPU cannot be
recorded as a CUDA graph (engines/cuda_graphs.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of `model` whose inputs named in `shapes` have those dimensions. Raises ValueError for an input
    the graph lacks, a rank that differs, or a dimension the graph fixes to another size."""
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
