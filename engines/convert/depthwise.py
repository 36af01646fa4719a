"""Depthwise convolutions rewritten as ordinary ones whose weights are zero off the diagonal.

Each output channel still sees only its own input channel (the other channels' terms are multiplied by
exact zeros), so the results are the depthwise convolution's up to rounding. The point is the GPU's set-up:
cuDNN compiles execution plans for depthwise convolutions at run time, seconds per input shape of the face
detector, where ordinary convolutions have precompiled kernels (docs/performance.md, "Known to be slow").
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def depthwise_weights(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The weights of a depthwise Conv (one input channel per group, as many groups as output channels, weights
    an initializer); None for any other node."""
    if node.op_type != "Conv" or node.input[1] not in weights:
        return None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    w = numpy_helper.to_array(weights[node.input[1]])
    return w if group > 1 and w.shape[1] == 1 and w.shape[0] == group else None


def has_depthwise(model: onnx.ModelProto) -> bool:
    """Whether the model has a depthwise convolution that dense_depthwise would rewrite."""
    weights = {init.name: init for init in model.graph.initializer}
    return any(depthwise_weights(node, weights) is not None for node in model.graph.node)


def dense_depthwise(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every depthwise Conv (one input channel per group, as many groups as output
    channels, weights an initializer) is an ordinary Conv with diagonal weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {init.name: init for init in graph.initializer}
    for node in graph.node:
        w = depthwise_weights(node, weights)
        if w is None:
            continue
        channels = w.shape[0]
        dense = np.zeros((channels, channels, *w.shape[2:]), w.dtype)
        dense[np.arange(channels), np.arange(channels)] = w[:, 0]
        name = f"{node.input[1]}__dense"
        if name not in weights:
            weights[name] = numpy_helper.from_array(dense, name)
            graph.initializer.append(weights[name])
        node.input[1] = name
        for attr in node.attribute:
            if attr.name == "group":
                attr.i = 1
    drop_unused_initializers(graph)
    return out


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node of `graph` reads (weights a rewrite replaced)."""
    used = {i for node in graph.node for i in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
