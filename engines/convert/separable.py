"""Depthwise-separable pairs folded into one ordinary convolution.

A depthwise k x k convolution whose output feeds only a 1 x 1 convolution computes, together with it,

    y[o] = sum_i p[o, i] * (d[i] * x[i] + b_d[i]) + b_p[o]

which is one ordinary k x k convolution of x with weights p[o, i] * d[i] and bias b_p + p @ b_d: same padding,
stride and dilation as the depthwise one. The folded graph gives the same outputs up to rounding, and a GPU runs
one ordinary convolution, for which cuDNN has precompiled kernels, instead of a depthwise one whose plans cuDNN
compiles at run time, an intermediate tensor written and read back, and a second convolution. It does more
arithmetic (k * k * C_in * C_out against k * k * C_in + C_in * C_out per output pixel), so a CPU, which is bound by
arithmetic, keeps the pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engines.convert.depthwise import depthwise_weights, drop_unused_initializers

FoldRule = Callable[[int, int], bool]
"""(input channels, output channels) of a pair -> whether to fold it."""


def fold_all(channels_in: int, channels_out: int) -> bool:
    """Every pair."""
    return True


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def pair_nodes(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Node indices of (depthwise, pointwise) Conv pairs: a depthwise Conv (`depthwise_weights`) whose output is
    read only by a 1 x 1, stride-1, unpadded, ungrouped Conv with initializer
    weights."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    readers = Counter(i for node in graph.node for i in node.input)
    outputs = {o.name for o in graph.output}
    by_input = {i: k for k, node in enumerate(graph.node) for i in node.input}
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    pairs = []
    for k, dw in enumerate(graph.node):
        if depthwise_weights(dw, weights) is None:
            continue
        w = shapes[dw.input[1]]
        y = dw.output[0]
        if y not in by_input:
            continue
        pw = graph.node[by_input[y]]
        if readers[y] != 1 or y in outputs or pw.op_type != "Conv" or pw.input[0] != y:
            continue
        if pw.input[1] not in weights or (len(pw.input) > 2 and pw.input[2] and pw.input[2] not in weights):
            continue
        pw_shape = shapes[pw.input[1]]
        strides = _attr(pw, "strides", [1, 1])
        pads = _attr(pw, "pads", [0, 0, 0, 0])
        if (pw_shape[2:] != (1, 1) or _attr(pw, "group", 1) != 1 or pw_shape[1] != w[0]
                or any(s != 1 for s in strides) or any(p != 0 for p in pads)  # type: ignore[attr-defined]
                or _attr(pw, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        pairs.append((k, by_input[y]))
    return pairs


def separable_pairs(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """(input channels, output channels) of each pair fold_separable can fold, in graph order."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    nodes = model.graph.node
    return [(shapes[nodes[dw].input[1]][0], shapes[nodes[pw].input[1]][0]) for dw, pw in pair_nodes(model)]


def fold_separable(model: onnx.ModelProto, fold: FoldRule = fold_all) -> onnx.ModelProto:
    """A copy of `model` (FP32 weights) with each depthwise-separable pair for which fold(C_in, C_out) holds
    replaced by one ordinary convolution (module docstring). Weights are combined in float64."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {init.name: init for init in graph.initializer}
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for i, j in pair_nodes(out):
        dw, pw = graph.node[i], graph.node[j]
        d = numpy_helper.to_array(weights[dw.input[1]]).astype(np.float64)  # C x 1 x k x k
        p_weights = numpy_helper.to_array(weights[pw.input[1]])
        p = p_weights.astype(np.float64)[:, :, 0, 0]  # C_out x C
        if not fold(d.shape[0], p.shape[0]):
            continue
        b_d = (numpy_helper.to_array(weights[dw.input[2]]).astype(np.float64)
               if len(dw.input) > 2 and dw.input[2] else np.zeros(d.shape[0]))
        b_p = (numpy_helper.to_array(weights[pw.input[2]]).astype(np.float64)
               if len(pw.input) > 2 and pw.input[2] else np.zeros(p.shape[0]))
        dtype = p_weights.dtype
        w_name, b_name = f"{pw.output[0]}__folded_w", f"{pw.output[0]}__folded_b"
        for name, value in ((w_name, p[:, :, None, None] * d[None, :, 0]), (b_name, b_p + p @ b_d)):
            weights[name] = numpy_helper.from_array(value.astype(dtype), name)
            graph.initializer.append(weights[name])
        kept = [a for a in dw.attribute if a.name != "group"]
        node = helper.make_node("Conv", [dw.input[0], w_name, b_name], [pw.output[0]], name=f"{pw.name}__folded")
        node.attribute.extend(kept)
        replaced[j] = node
        dropped.add(i)
    nodes = [replaced.get(k, n) for k, n in enumerate(graph.node) if k not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return out
