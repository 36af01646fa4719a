"""Convert a Darknet YOLOv3(-tiny) detector (.cfg + .weights) to ONNX with numpy and onnx only.

The .cfg is read section by section; the .weights file is a header (major, minor, revision, then the
number of images seen: int64 from version 0.2 on, int32 before) followed by float32 weights in layer
order (per convolution: biases, then BN scale, mean, variance when batch-normalised, then the kernel).
Batch normalisation is folded into the convolution. Supported layers: convolutional (leaky 0.1 or
linear), maxpool, route, upsample and yolo; anything else fails with the section's name.

Only one class is kept (COCO's person, class 0): each YOLO head's last 1x1 convolution is cut to the
six channels per anchor that the person score needs (x, y, w, h, objectness, person logit), and the
heads are decoded inside the graph.

Graph contract: input ``image`` uint8 [N, H, W, 3] RGB, H and W any multiples of 32 (the network's total
stride); /255 and the NCHW transpose happen inside the graph. Outputs ``boxes`` float32 [N, A, 4]
(x0, y0, x1, y1 in input pixels) and ``scores`` float32 [N, A] (objectness x person probability), with
A = sum over the heads of 3 x (H / stride) x (W / stride), head by head in .cfg order (stride 32, then
16), each anchor by anchor, then row-major over the grid. Thresholds and NMS stay outside the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
"""IR 8 is the oldest that carries opset 17 (loadable by older ONNX Runtime and TensorRT)."""
INPUT_NAME = "image"
BOXES_NAME = "boxes"
SCORES_NAME = "scores"
TOTAL_STRIDE = 32
PERSON_CLASS = 0
LEAKY_SLOPE = 0.1
BN_EPS = 1e-6
"""Darknet's inference batch norm (normalize_cpu): (x - mean) / (sqrt(variance) + .000001)."""

Array = npt.NDArray[Any]


@dataclass
class Section:
    kind: str
    options: dict[str, str]
    line: int

    def integer(self, key: str, default: int | None = None) -> int:
        if key not in self.options and default is not None:
            return default
        values = self.integers(key)
        if len(values) != 1:
            raise ValueError(f"[{self.kind}] at line {self.line}: {key}= must be one integer")
        return values[0]

    def integers(self, key: str) -> list[int]:
        if key not in self.options:
            raise ValueError(f"[{self.kind}] at line {self.line} has no {key}=")
        try:
            return [int(v) for v in self.options[key].split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"[{self.kind}] at line {self.line}: {key}={self.options[key]!r} is not a list of "
                             "integers") from None


def parse_cfg(text: str) -> list[Section]:
    """The sections of a Darknet .cfg, in order, [net] included."""
    sections: list[Section] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"line {n}: malformed section header {raw.strip()!r}")
            sections.append(Section(line[1:-1].strip(), {}, n))
        elif "=" in line:
            if not sections:
                raise ValueError(f"line {n}: option before the first section")
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ValueError(f"line {n}: expected key=value, got {raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise ValueError("the .cfg does not start with a [net] section")
    return sections


class WeightReader:
    """Float32 weights after the header, read in order."""

    def __init__(self, data: bytes):
        if len(data) < 16:
            raise ValueError(f"the .weights file has {len(data)} bytes, too short for a Darknet header")
        major, minor, revision = np.frombuffer(data, "<i4", 3)
        seen_bytes = 8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4
        self.version = (int(major), int(minor), int(revision))
        start = 12 + seen_bytes
        if (len(data) - start) % 4:
            raise ValueError(f"the .weights body is {len(data) - start} bytes, not a whole number of float32")
        self.values = np.frombuffer(data, "<f4", offset=start)
        self.pos = 0

    def take(self, n: int, what: str) -> Array:
        if self.pos + n > len(self.values):
            raise ValueError(f"the .weights file ends inside {what} (needs {n} values at {self.pos}, "
                             f"has {len(self.values)}): it does not match the .cfg")
        out = self.values[self.pos:self.pos + n].astype(np.float32)
        self.pos += n
        return out


@dataclass
class _Builder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: Array) -> str:
        name = self.name(hint)
        # np.require keeps a scalar a scalar (ascontiguousarray makes it 1-D, and Range takes only scalars)
        self.inits.append(numpy_helper.from_array(np.require(value, requirements="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        return self.multi(op_type, inputs, hint, outputs=1, **attrs)[0]

    def multi(self, op_type: str, inputs: list[str], hint: str | None = None, *, outputs: int,
              **attrs: Any) -> list[str]:
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names


@dataclass
class _Tensor:
    name: str
    channels: int
    stride: int


def convert_darknet_yolo(cfg_text: str, weights: bytes, *, graph_name: str, keep_class: int = PERSON_CLASS,
                         masks: Sequence[Sequence[int]] | None = None) -> onnx.ModelProto:
    """The ONNX model of a Darknet YOLO .cfg + .weights pair (see the module docstring for the contract).

    masks: the anchor mask of each [yolo] layer in order, in place of the .cfg's (for a .cfg whose masks
    differ from those the weights were trained with). Raises ValueError naming the section or the reason
    when the files do not fit together or use a layer this converter does not support.
    """
    sections = parse_cfg(cfg_text)
    heads = [sec for sec in sections if sec.kind == "yolo"]
    if masks is not None:
        if len(masks) != len(heads):
            raise ValueError(f"{len(masks)} anchor masks given for {len(heads)} [yolo] layers")
        for sec, mask in zip(heads, masks, strict=True):
            sec.options["mask"] = ",".join(str(m) for m in mask)
    net = sections[0]
    reader = WeightReader(weights)
    b = _Builder()
    x = b.op("Cast", [INPUT_NAME], "image_f", to=TensorProto.FLOAT)
    x = b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    x = b.op("Mul", [x, b.const("inv255", np.array(1 / 255, np.float32))], "input")
    current = _Tensor(x, net.integer("channels", 3), 1)
    layers: list[_Tensor] = []
    box_parts: list[str] = []
    score_parts: list[str] = []
    pending_head: tuple[Section, int] | None = None  # the convolution before a [yolo] is cut to one class
    for index, sec in enumerate(sections[1:]):
        if sec.kind == "convolutional":
            nxt = sections[index + 2] if index + 2 < len(sections) else None
            keep = None
            if nxt is not None and nxt.kind == "yolo":
                keep = _head_channels(nxt, sec, keep_class)
                pending_head = (nxt, len(keep) // 6)
            current = _convolution(b, reader, sec, current, keep)
        elif sec.kind == "maxpool":
            current = _maxpool(b, sec, current)
        elif sec.kind == "upsample":
            stride = sec.integer("stride", 2)
            scales = b.const("scales", np.array([1, 1, stride, stride], np.float32))
            out = b.op("Resize", [current.name, "", scales], "upsample", mode="nearest")
            current = _Tensor(out, current.channels, current.stride // stride)
        elif sec.kind == "route":
            picked = [layers[i if i >= 0 else index + i] for i in sec.integers("layers")]
            if len({t.stride for t in picked}) != 1:
                raise ValueError(f"[route] at line {sec.line} joins layers of different strides")
            name = picked[0].name if len(picked) == 1 else b.op("Concat", [t.name for t in picked], "route", axis=1)
            current = _Tensor(name, sum(t.channels for t in picked), picked[0].stride)
        elif sec.kind == "yolo":
            if pending_head is None or pending_head[0] is not sec:
                raise ValueError(f"[yolo] at line {sec.line} does not follow a convolution")
            boxes, scores = _decode_head(b, sec, current)
            box_parts.append(boxes)
            score_parts.append(scores)
            pending_head = None
        else:
            raise ValueError(f"[{sec.kind}] at line {sec.line} is not supported by this converter")
        layers.append(current)
    if reader.pos != len(reader.values):
        raise ValueError(f"the .weights file has {len(reader.values) - reader.pos} values left over: "
                         "it does not match the .cfg")
    if not box_parts:
        raise ValueError("the .cfg has no [yolo] layer")
    b.nodes.append(helper.make_node("Concat", box_parts, [BOXES_NAME], axis=1))
    b.nodes.append(helper.make_node("Concat", score_parts, [SCORES_NAME], axis=1))
    graph = helper.make_graph(
        b.nodes, graph_name,
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", "H", "W", 3])],
        outputs=[helper.make_tensor_value_info(BOXES_NAME, TensorProto.FLOAT, ["N", "A", 4]),
                 helper.make_tensor_value_info(SCORES_NAME, TensorProto.FLOAT, ["N", "A"])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="vidx.darknet_onnx", ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def _head_channels(yolo: Section, conv: Section, keep_class: int) -> list[int]:
    """Output channels of a head's last convolution that one class needs: per anchor x y w h obj class."""
    classes = yolo.integer("classes")
    n_anchors = len(yolo.integers("mask"))
    if conv.integer("filters") != n_anchors * (5 + classes):
        raise ValueError(f"[convolutional] at line {conv.line} has {conv.integer('filters')} filters; the [yolo] "
                         f"after it needs {n_anchors} x (5 + {classes})")
    if not 0 <= keep_class < classes:
        raise ValueError(f"class {keep_class} is not among the {classes} classes of the [yolo] at line {yolo.line}")
    per = 5 + classes
    return [a * per + c for a in range(n_anchors) for c in (0, 1, 2, 3, 4, 5 + keep_class)]


def _convolution(b: _Builder, reader: WeightReader, sec: Section, x: _Tensor, keep: list[int] | None) -> _Tensor:
    filters, size, stride = sec.integer("filters"), sec.integer("size"), sec.integer("stride", 1)
    if sec.integer("groups", 1) != 1 or sec.integer("dilation", 1) != 1:
        raise ValueError(f"[convolutional] at line {sec.line}: groups and dilation are not supported")
    pad = size // 2 if sec.integer("pad", 0) else sec.integer("padding", 0)
    what = f"[convolutional] at line {sec.line}"
    bias = reader.take(filters, what)
    kernel_count = filters * x.channels * size * size
    if sec.integer("batch_normalize", 0):
        scale, mean, var = (reader.take(filters, what) for _ in range(3))
        kernel = reader.take(kernel_count, what).reshape(filters, x.channels, size, size)
        factor = scale / (np.sqrt(var) + BN_EPS)
        kernel = kernel * factor[:, None, None, None]
        bias = bias - mean * factor
    else:
        kernel = reader.take(kernel_count, what).reshape(filters, x.channels, size, size)
    if keep is not None:
        kernel, bias = kernel[keep], bias[keep]
    out = b.op("Conv", [x.name, b.const("w", kernel.astype(np.float32)), b.const("b", bias.astype(np.float32))],
               "conv", kernel_shape=[size, size], strides=[stride, stride], pads=[pad] * 4)
    activation = sec.options.get("activation", "logistic")
    if activation == "leaky":
        out = b.op("LeakyRelu", [out], "leaky", alpha=LEAKY_SLOPE)
    elif activation != "linear":
        raise ValueError(f"{what}: activation {activation!r} is not supported (leaky, linear)")
    return _Tensor(out, len(keep) if keep is not None else filters, x.stride * stride)


def _maxpool(b: _Builder, sec: Section, x: _Tensor) -> _Tensor:
    size, stride = sec.integer("size", 2), sec.integer("stride", 2)
    padding = sec.integer("padding", size - 1)
    # Darknet pads `padding` in total, padding // 2 before and the rest after (the -inf border never wins):
    # the size-2 stride-1 pool of YOLOv3-tiny keeps the map's size with one column and row after it.
    before, after = padding // 2, padding - padding // 2
    out = b.op("MaxPool", [x.name], "maxpool", kernel_shape=[size, size], strides=[stride, stride],
               pads=[before, before, after, after])
    return _Tensor(out, x.channels, x.stride * stride)


def _decode_head(b: _Builder, sec: Section, x: _Tensor) -> tuple[str, str]:
    """[N, 3*6, gh, gw] raw head -> boxes [N, 3*gh*gw, 4] in input pixels and scores [N, 3*gh*gw]."""
    mask = sec.integers("mask")
    anchors = np.array(sec.integers("anchors"), np.float32).reshape(-1, 2)[mask]
    if sec.options.get("scale_x_y", "1").strip() not in ("1", "1.0") or sec.integer("new_coords", 0):
        raise ValueError(f"[yolo] at line {sec.line}: scale_x_y and new_coords are not supported")
    k = len(mask)
    i64 = np.int64
    head = b.op("Reshape", [x.name, b.const("shape", np.array([0, k, 6, -1], i64))], "head_flat")
    shape = b.op("Shape", [x.name], "head_shape")
    gh = b.op("Gather", [shape, b.const("two", np.array(2, i64))], "gh", axis=0)
    gw = b.op("Gather", [shape, b.const("three", np.array(3, i64))], "gw", axis=0)
    zero, one = b.const("zero", np.array(0, i64)), b.const("one", np.array(1, i64))
    cols = b.op("Cast", [b.op("Range", [zero, gw, one], "cols_i")], "cols", to=TensorProto.FLOAT)
    rows = b.op("Cast", [b.op("Range", [zero, gh, one], "rows_i")], "rows", to=TensorProto.FLOAT)
    # cell column and row of the row-major grid, [1, 1, gh*gw] each
    cols = b.op("Unsqueeze", [cols, b.const("ax0", np.array([0], i64))], "cols_row")
    rows = b.op("Unsqueeze", [rows, b.const("ax1", np.array([1], i64))], "rows_col")
    nought = b.const("nought", np.array(0, np.float32))
    flat = b.const("flat", np.array([1, 1, -1], i64))
    grid_x = b.op("Reshape", [b.op("Add", [cols, b.op("Mul", [rows, nought])]), flat], "grid_x")
    grid_y = b.op("Reshape", [b.op("Add", [rows, b.op("Mul", [cols, nought])]), flat], "grid_y")
    parts = b.multi("Split", [head, b.const("split", np.array([1] * 6, i64))], "part", outputs=6, axis=2)
    squeeze = b.const("ax2", np.array([2], i64))
    tx, ty, tw, th, obj, cls = (b.op("Squeeze", [t, squeeze], "sq") for t in parts)
    stride = b.const("stride", np.array(x.stride, np.float32))
    cx = b.op("Mul", [b.op("Add", [b.op("Sigmoid", [tx]), grid_x]), stride], "cx")
    cy = b.op("Mul", [b.op("Add", [b.op("Sigmoid", [ty]), grid_y]), stride], "cy")
    half_w = b.op("Mul", [b.op("Exp", [tw]), b.const("anchor_hw", anchors[:, 0].reshape(1, k, 1) / 2)], "half_w")
    half_h = b.op("Mul", [b.op("Exp", [th]), b.const("anchor_hh", anchors[:, 1].reshape(1, k, 1) / 2)], "half_h")
    corners = [b.op("Sub", [cx, half_w], "x0"), b.op("Sub", [cy, half_h], "y0"),
               b.op("Add", [cx, half_w], "x1"), b.op("Add", [cy, half_h], "y1")]
    last = b.const("ax3", np.array([3], i64))
    boxes = b.op("Concat", [b.op("Unsqueeze", [c, last]) for c in corners], "head_boxes", axis=3)
    boxes = b.op("Reshape", [boxes, b.const("boxes_shape", np.array([0, -1, 4], i64))], "boxes_part")
    scores = b.op("Mul", [b.op("Sigmoid", [obj]), b.op("Sigmoid", [cls])], "head_scores")
    scores = b.op("Reshape", [scores, b.const("scores_shape", np.array([0, -1], i64))], "scores_part")
    return boxes, scores
