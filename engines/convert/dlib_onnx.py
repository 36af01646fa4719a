"""Convert dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) to ONNX.

dlib stores networks in its own binary serialisation. This module reads that format directly, so the
conversion needs neither dlib nor PyTorch: numpy and onnx only. The ONNX graph takes ``chips`` (uint8 RGB,
NHWC, [N, 150, 150, 3], aligned face chips, dynamic batch) and returns ``embedding`` (float32 [N, 128]), the
raw dlib descriptor, not normalised: dlib calls two faces the same person when their L2 distance is < 0.6.

Layout of the file, as dlib writes it: the loss layer first, then one version number per wrapper of the
network from the output down to the input (layers version 2 or 3, tag/skip wrappers version 1), then the
input layer, then each layer's parameters and bookkeeping from the input up to the output. Tag and skip
wrappers leave no name and no id in the file, only their version number; the residual wiring is therefore
recognised from the layer pattern, and a file whose pattern differs is rejected rather than guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
"""IR 8 is the oldest that carries opset 17: it keeps the file loadable by older ONNX Runtime/TensorRT."""

INPUT_NAME = "chips"
OUTPUT_NAME = "embedding"
BATCH_DIM = "N"
INPUT_SCALE = 256.0
"""dlib's input layer maps a pixel to (value - channel mean) / 256."""

_NHWC_TO_NCHW = (0, 3, 1, 2)
_TAG_OR_SKIP_VERSION = 1
_LAYER_VERSIONS = (2, 3)
_FC_NO_BIAS = 1
_AFFINE_CONV_MODE = 0
_FLOAT_SPECIAL_EXPONENTS = (32000, 32001, 32002)

Array = npt.NDArray[np.float32]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Conv:
    """A convolution with its bias; ``weight`` is OIHW, as both dlib and ONNX store it."""

    weight: Array
    bias: Array
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Affine:
    """Per-channel ``x * gamma + beta``: dlib's frozen batch normalisation."""

    gamma: Array
    beta: Array


@dataclass(frozen=True, slots=True)
class Pool:
    """A max or average pooling window; size (0, 0) means the whole feature map (global pooling)."""

    kind: Literal["max", "avg"]
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ResidualBlock:
    """conv-affine-relu-conv-affine, added to the (optionally average-pooled) block input, then relu."""

    conv1: Conv
    affine1: Affine
    conv2: Conv
    affine2: Affine
    shortcut_pool: Pool | None


@dataclass(frozen=True, slots=True)
class DlibResNet:
    """The network as read from the .dat file: what the ONNX graph needs, none of dlib's training state."""

    channel_means: tuple[float, float, float]
    input_size: tuple[int, int]
    stem_conv: Conv
    stem_affine: Affine
    stem_pool: Pool
    blocks: tuple[ResidualBlock, ...]
    fc_weight: Array
    """[inputs, outputs]: dlib multiplies row vectors by this matrix."""
    fc_bias: Array | None
    loss_margin: float
    distance_threshold: float


@dataclass(frozen=True, slots=True)
class _Relu:
    pass


@dataclass(frozen=True, slots=True)
class _AddPrev:
    pass


@dataclass(frozen=True, slots=True)
class _TagOrSkip:
    pass


@dataclass(frozen=True, slots=True)
class _Fc:
    weight: Array
    bias: Array | None


_Layer = Conv | Affine | Pool | _Relu | _AddPrev | _TagOrSkip | _Fc


def read_dlib_resnet(dat_bytes: bytes) -> DlibResNet:
    """Parse a dlib metric-learning ResNet .dat file.

    Raises ValueError naming the problem and its byte offset when the file is truncated, uses a layer
    type or version this reader does not know, or is wired differently from dlib's face ResNet.
    """
    reader = _Reader(dat_bytes)
    margin, threshold = _read_loss(reader)
    versions = _read_wrapper_versions(reader)
    means, input_size = _read_input_layer(reader)
    layers = [_read_wrapped_layer(reader, version) for version in reversed(versions)]
    reader.expect_end()
    net = _assemble(layers, means, input_size, margin, threshold)
    _check_channels(net)
    return net


def convert_dlib_resnet(dat_bytes: bytes, *, graph_name: str = "dlib_face_resnet_v1") -> onnx.ModelProto:
    """Convert the .dat file to a batch-dynamic ONNX model (opset 17), affine layers folded into the convs.

    The input normalisation lives inside the graph so that callers hand over uint8 chips exactly as
    dlib's aligner produces them, and no caller can forget dlib's channel means.
    """
    net = read_dlib_resnet(dat_bytes)
    builder = _GraphBuilder()
    height, width = net.input_size
    x = _emit_input_normalisation(builder, net.channel_means)
    x, shape = _emit_conv(builder, x, (3, height, width), net.stem_conv, net.stem_affine, "stem")
    x = builder.node("Relu", [x])
    x, shape = _emit_pool(builder, x, shape, net.stem_pool)
    for index, block in enumerate(net.blocks):
        x, shape = _emit_block(builder, x, shape, block, f"block{index}")
    x = builder.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
    _emit_fc(builder, x, net.fc_weight, net.fc_bias)
    graph = helper.make_graph(
        builder.nodes,
        graph_name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [BATCH_DIM, height, width, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, net.fc_weight.shape[1]])],
        builder.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vidx.dlib_onnx",
        ir_version=IR_VERSION,
    )
    helper.set_model_props(
        model,
        {
            "dlib_channel_means_rgb": ",".join(_float32_text(m) for m in net.channel_means),
            "dlib_distance_threshold": _float32_text(net.distance_threshold),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _float32_text(value: float) -> str:
    """dlib stored these as float32: print the shortest text that reads back to the same float32."""
    return str(np.float32(value))


class _Reader:
    """A cursor over dlib's serialisation primitives; reads are bounds-checked to fail with an offset."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self.pos = 0

    def _take(self, count: int, what: str) -> bytes:
        end = self.pos + count
        if count < 0 or end > len(self._data):
            raise ValueError(f"dlib .dat: truncated while reading {what} at byte {self.pos}")
        chunk = self._data[self.pos : end]
        self.pos = end
        return chunk

    def peek_int(self) -> int:
        """The next integer without consuming it: wrapper versions end where the input layer's name begins."""
        start = self.pos
        value = self.read_int("integer")
        self.pos = start
        return value

    def read_int(self, what: str) -> int:
        """dlib's packed integer: a control byte (bit 7 sign, low nibble byte count), little-endian bytes."""
        start = self.pos
        control = self._take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise ValueError(
                f"dlib .dat: bad integer control byte 0x{control:02x} for {what} at byte {start}"
            )
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def read_count(self, what: str) -> int:
        start = self.pos
        value = self.read_int(what)
        if value < 0:
            raise ValueError(f"dlib .dat: negative {what} ({value}) at byte {start}")
        return value

    def read_float(self, what: str) -> float:
        """dlib writes floats as an integer mantissa and a power-of-two exponent: exact."""
        start = self.pos
        mantissa = self.read_int(what)
        exponent = self.read_int(what)
        if exponent in _FLOAT_SPECIAL_EXPONENTS:
            raise ValueError(f"dlib .dat: non-finite {what} at byte {start}")
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError as exc:
            raise ValueError(f"dlib .dat: {what} out of range at byte {start}") from exc

    def read_bool(self, what: str) -> bool:
        start = self.pos
        char = self._take(1, what)
        if char not in (b"0", b"1"):
            raise ValueError(f"dlib .dat: bad boolean {char!r} for {what} at byte {start}")
        return char == b"1"

    def read_string(self, what: str) -> str:
        start = self.pos
        raw = self._take(self.read_count(what), what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ValueError(f"dlib .dat: non-ASCII {what} at byte {start}") from exc

    def read_tensor(self, what: str) -> Array:
        """A resizable_tensor: version 2, four dimensions, then raw little-endian float32 values."""
        start = self.pos
        version = self.read_int(what)
        if version != 2:
            raise ValueError(f"dlib .dat: {what} has tensor version {version}, expected 2, at byte {start}")
        dims = [self.read_count(what) for _ in range(4)]
        size = math.prod(dims)
        values = np.frombuffer(self._take(4 * size, what), dtype="<f4")
        return values.astype(np.float32).reshape(dims)

    def read_alias_shape(self, what: str) -> tuple[int, int, int, int]:
        """An alias_tensor: the shape of a view into a layer's flat parameter tensor."""
        start = self.pos
        version = self.read_int(what)
        if version != 1:
            raise ValueError(f"dlib .dat: {what} has alias version {version}, expected 1, at byte {start}")
        n, k, rows, cols = (self.read_count(what) for _ in range(4))
        return n, k, rows, cols

    def expect_end(self) -> None:
        if self.pos != len(self._data):
            raise ValueError(
                f"dlib .dat: {len(self._data) - self.pos} bytes left after the network, at byte {self.pos}"
            )


def _read_loss(reader: _Reader) -> tuple[float, float]:
    """The loss layer comes first; its distance threshold is the 0.6 that decides 'same person'."""
    version = reader.read_int("loss wrapper version")
    if version != 1:
        raise ValueError(f"dlib .dat: loss wrapper version {version}, expected 1 (is this a dlib DNN file?)")
    start = reader.pos
    name = reader.read_string("loss layer name")
    if name != "loss_metric_2":
        raise ValueError(f"dlib .dat: loss layer {name!r} at byte {start}, expected 'loss_metric_2'")
    return reader.read_float("loss margin"), reader.read_float("loss distance threshold")


def _read_wrapper_versions(reader: _Reader) -> list[int]:
    """Versions of all wrappers, output to input; the input layer's name (a long string) ends the run."""
    versions: list[int] = []
    while reader.peek_int() in (_TAG_OR_SKIP_VERSION, *_LAYER_VERSIONS):
        versions.append(reader.read_int("wrapper version"))
    if not versions or versions[-1] not in _LAYER_VERSIONS:
        raise ValueError(
            f"dlib .dat: no layer wraps the input layer (wrapper versions end at byte {reader.pos})"
        )
    return versions


def _read_input_layer(reader: _Reader) -> tuple[tuple[float, float, float], tuple[int, int]]:
    start = reader.pos
    name = reader.read_string("input layer name")
    if name != "input_rgb_image_sized":
        raise ValueError(f"dlib .dat: input layer {name!r} at byte {start}, expected 'input_rgb_image_sized'")
    means = (reader.read_float("red mean"), reader.read_float("green mean"), reader.read_float("blue mean"))
    size = (reader.read_count("input rows"), reader.read_count("input columns"))
    return means, size


def _read_wrapped_layer(reader: _Reader, version: int) -> _Layer:
    """One wrapper's payload: nothing for tag/skip, else the layer and add_layer's training bookkeeping.

    The bookkeeping (three flags, three scratch tensors) is read only to find the next layer; version 3,
    written for the layer that sits on the input layer, adds its sample expansion factor.
    """
    if version == _TAG_OR_SKIP_VERSION:
        return _TagOrSkip()
    layer = _read_layer(reader)
    for what in ("setup flag", "stale-gradient flag", "in-place flag"):
        reader.read_bool(what)
    for what in ("x_grad", "cached_output", "gradient tensor"):
        reader.read_tensor(what)
    if version == 3:
        reader.read_int("sample expansion factor")
    return layer


def _read_layer(reader: _Reader) -> _Layer:
    start = reader.pos
    name = reader.read_string("layer name")
    if name == "con_4":
        return _read_conv(reader, start)
    if name == "affine_":
        return _read_affine(reader, start)
    if name in ("max_pool_2", "avg_pool_2"):
        return _read_pool(reader, "max" if name.startswith("max") else "avg")
    if name == "relu_":
        return _Relu()
    if name == "add_prev_":
        return _AddPrev()
    if name == "fc_2":
        return _read_fc(reader, start)
    raise ValueError(f"dlib .dat: unsupported layer {name!r} at byte {start}")


def _read_conv(reader: _Reader, start: int) -> Conv:
    params = reader.read_tensor("conv parameters").ravel()
    filters, rows, cols = (reader.read_count("conv shape") for _ in range(3))
    stride = (reader.read_count("conv stride"), reader.read_count("conv stride"))
    padding = (reader.read_count("conv padding"), reader.read_count("conv padding"))
    weight_shape = reader.read_alias_shape("conv filter view")
    bias_shape = reader.read_alias_shape("conv bias view")
    for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        reader.read_float(what)
    weight_size = math.prod(weight_shape)
    if weight_shape[0] != filters or weight_shape[2:] != (rows, cols) or math.prod(bias_shape) != filters:
        raise ValueError(
            f"dlib .dat: conv at byte {start}: views {weight_shape} {bias_shape} for {filters} filters"
        )
    if params.size != weight_size + filters:
        raise ValueError(
            f"dlib .dat: conv at byte {start} has {params.size} parameters, expected {weight_size + filters}"
        )
    if min(stride) < 1:
        raise ValueError(f"dlib .dat: conv at byte {start} has stride {stride}")
    return Conv(params[:weight_size].reshape(weight_shape), params[weight_size:].copy(), stride, padding)


def _read_affine(reader: _Reader, start: int) -> Affine:
    params = reader.read_tensor("affine parameters").ravel()
    gamma_shape = reader.read_alias_shape("affine gamma view")
    beta_shape = reader.read_alias_shape("affine beta view")
    mode = reader.read_int("affine mode")
    channels = math.prod(gamma_shape)
    if mode != _AFFINE_CONV_MODE or gamma_shape != beta_shape or gamma_shape[1] != channels:
        raise ValueError(
            f"dlib .dat: affine at byte {start} not per-channel: mode {mode}, {gamma_shape} {beta_shape}"
        )
    if params.size != 2 * channels:
        raise ValueError(
            f"dlib .dat: affine at byte {start} has {params.size} parameters, expected {2 * channels}"
        )
    return Affine(params[:channels].copy(), params[channels:].copy())


def _read_pool(reader: _Reader, kind: Literal["max", "avg"]) -> Pool:
    size = (reader.read_count("pool rows"), reader.read_count("pool columns"))
    stride = (reader.read_count("pool stride"), reader.read_count("pool stride"))
    padding = (reader.read_count("pool padding"), reader.read_count("pool padding"))
    return Pool(kind, size, stride, padding)


def _read_fc(reader: _Reader, start: int) -> _Fc:
    outputs = reader.read_count("fc outputs")
    inputs = reader.read_count("fc inputs")
    params = reader.read_tensor("fc parameters").ravel()
    reader.read_alias_shape("fc weight view")
    reader.read_alias_shape("fc bias view")
    bias_mode = reader.read_int("fc bias mode")
    for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        reader.read_float(what)
    rows = inputs if bias_mode == _FC_NO_BIAS else inputs + 1
    if params.size != rows * outputs:
        raise ValueError(
            f"dlib .dat: fc at byte {start} has {params.size} parameters, expected {rows}x{outputs}"
        )
    matrix = params.reshape(rows, outputs)
    bias = None if bias_mode == _FC_NO_BIAS else matrix[inputs].copy()
    return _Fc(matrix[:inputs].copy(), bias)


class _LayerStream:
    """Takes the flat input-to-output layer list apart, naming the position of any unexpected layer."""

    def __init__(self, layers: Sequence[_Layer]) -> None:
        self._layers = layers
        self._index = 0

    def peek(self) -> _Layer | None:
        return self._layers[self._index] if self._index < len(self._layers) else None

    def take(self, kind: type[_T], role: str) -> _T:
        layer = self.peek()
        if not isinstance(layer, kind):
            found = "the end" if layer is None else type(layer).__name__.lstrip("_")
            raise ValueError(f"dlib .dat: layer {self._index} should be the {role}, found {found}")
        self._index += 1
        return layer

    def expect_end(self) -> None:
        if self._index != len(self._layers):
            raise ValueError(f"dlib .dat: {len(self._layers) - self._index} layers left after the fc layer")


def _assemble(
    layers: Sequence[_Layer],
    means: tuple[float, float, float],
    input_size: tuple[int, int],
    margin: float,
    threshold: float,
) -> DlibResNet:
    """Recognise stem, residual blocks and head in the layer list; any other arrangement is an error."""
    stream = _LayerStream(layers)
    stem_conv = stream.take(Conv, "stem conv")
    stem_affine = stream.take(Affine, "stem affine")
    stream.take(_Relu, "stem relu")
    stem_pool = stream.take(Pool, "stem max pool")
    if stem_pool.kind != "max":
        raise ValueError("dlib .dat: the stem pool is not a max pool")
    blocks: list[ResidualBlock] = []
    while isinstance(stream.peek(), _TagOrSkip):
        blocks.append(_take_block(stream))
    head_pool = stream.take(Pool, "global average pool")
    if head_pool.kind != "avg" or head_pool.size != (0, 0):
        raise ValueError(f"dlib .dat: the head pool is {head_pool}, expected a global average pool")
    fc = stream.take(_Fc, "fc layer")
    stream.expect_end()
    if not blocks:
        raise ValueError("dlib .dat: no residual blocks found")
    return DlibResNet(
        channel_means=means,
        input_size=input_size,
        stem_conv=stem_conv,
        stem_affine=stem_affine,
        stem_pool=stem_pool,
        blocks=tuple(blocks),
        fc_weight=fc.weight,
        fc_bias=fc.bias,
        loss_margin=margin,
        distance_threshold=threshold,
    )


def _take_block(stream: _LayerStream) -> ResidualBlock:
    """One residual block in dlib's write order: tag1, conv, affine, relu, conv, affine, add_prev, relu.

    The down-sampling variant has tag2, skip1 and avg_pool before add_prev: the skip returns to the
    block input (tag1), whose pooled copy is added to the block output (tag2).
    """
    stream.take(_TagOrSkip, "block input tag")
    conv1 = stream.take(Conv, "block conv 1")
    affine1 = stream.take(Affine, "block affine 1")
    stream.take(_Relu, "block relu")
    conv2 = stream.take(Conv, "block conv 2")
    affine2 = stream.take(Affine, "block affine 2")
    shortcut_pool: Pool | None = None
    if isinstance(stream.peek(), _TagOrSkip):
        stream.take(_TagOrSkip, "block output tag")
        stream.take(_TagOrSkip, "skip to block input")
        shortcut_pool = stream.take(Pool, "shortcut average pool")
        if shortcut_pool.kind != "avg" or shortcut_pool.size == (0, 0):
            raise ValueError(f"dlib .dat: shortcut pool {shortcut_pool} is not a windowed average pool")
    stream.take(_AddPrev, "residual add")
    stream.take(_Relu, "block output relu")
    return ResidualBlock(conv1, affine1, conv2, affine2, shortcut_pool)


def _check_channels(net: DlibResNet) -> None:
    """Every conv, affine and the fc must agree on channel counts; a mismatch means a misread file."""
    channels = _check_conv_affine(net.stem_conv, net.stem_affine, 3, "stem")
    for index, block in enumerate(net.blocks):
        inner = _check_conv_affine(block.conv1, block.affine1, channels, f"block {index} conv 1")
        channels = max(
            channels, _check_conv_affine(block.conv2, block.affine2, inner, f"block {index} conv 2")
        )
    if net.fc_weight.shape[0] != channels:
        raise ValueError(
            f"dlib .dat: fc expects {net.fc_weight.shape[0]} inputs, the network gives {channels}"
        )


def _check_conv_affine(conv: Conv, affine: Affine, in_channels: int, where: str) -> int:
    filters, conv_in = conv.weight.shape[:2]
    if conv_in != in_channels:
        raise ValueError(f"dlib .dat: {where} expects {conv_in} input channels, receives {in_channels}")
    if affine.gamma.size != filters:
        raise ValueError(
            f"dlib .dat: {where} has {filters} filters but its affine has {affine.gamma.size} channels"
        )
    return filters


class _GraphBuilder:
    """Collects nodes and float32 initializers under unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def constant(self, name: str, value: npt.NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: Sequence[str], *, output: str | None = None, **attrs: Any) -> str:
        self._counter += 1
        name = f"{op.lower()}_{self._counter}"
        result = output or name
        self.nodes.append(helper.make_node(op, list(inputs), [result], name=name, **attrs))
        return result


def _emit_input_normalisation(builder: _GraphBuilder, means: tuple[float, float, float]) -> str:
    x = builder.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
    x = builder.node("Sub", [x, builder.constant("input.channel_means", np.asarray(means, dtype=np.float32))])
    x = builder.node("Div", [x, builder.constant("input.scale", np.asarray(INPUT_SCALE, dtype=np.float32))])
    return builder.node("Transpose", [x], perm=list(_NHWC_TO_NCHW))


def _fold_affine(conv: Conv, affine: Affine) -> tuple[Array, Array]:
    """affine(conv(x)) = conv'(x) with scaled filters and bias: one node instead of three at inference."""
    gamma64 = affine.gamma.astype(np.float64)
    weight = conv.weight.astype(np.float64) * gamma64[:, None, None, None]
    bias = conv.bias.astype(np.float64) * gamma64 + affine.beta.astype(np.float64)
    return weight.astype(np.float32), bias.astype(np.float32)


def _window_out(length: int, window: int, stride: int, padding: int) -> int:
    """dlib and ONNX (floor mode) agree: 1 + (length + 2 * padding - window) // stride."""
    span = length + 2 * padding - window
    if span < 0:
        raise ValueError(
            f"dlib .dat: a {window}-wide window does not fit a feature map of {length} (padding {padding})"
        )
    return 1 + span // stride


def _emit_conv(
    builder: _GraphBuilder, x: str, shape: tuple[int, int, int], conv: Conv, affine: Affine, prefix: str
) -> tuple[str, tuple[int, int, int]]:
    weight, bias = _fold_affine(conv, affine)
    (kh, kw), (sy, sx), (py, px) = weight.shape[2:], conv.stride, conv.padding
    y = builder.node(
        "Conv",
        [x, builder.constant(f"{prefix}.weight", weight), builder.constant(f"{prefix}.bias", bias)],
        kernel_shape=[kh, kw],
        strides=[sy, sx],
        pads=[py, px, py, px],
    )
    return y, (weight.shape[0], _window_out(shape[1], kh, sy, py), _window_out(shape[2], kw, sx, px))


def _emit_pool(
    builder: _GraphBuilder, x: str, shape: tuple[int, int, int], pool: Pool
) -> tuple[str, tuple[int, int, int]]:
    (kh, kw), (sy, sx), (py, px) = pool.size, pool.stride, pool.padding
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [sy, sx], "pads": [py, px, py, px]}
    if pool.kind == "avg":
        attrs["count_include_pad"] = 0
    y = builder.node("MaxPool" if pool.kind == "max" else "AveragePool", [x], **attrs)
    return y, (shape[0], _window_out(shape[1], kh, sy, py), _window_out(shape[2], kw, sx, px))


def _emit_block(
    builder: _GraphBuilder, x: str, shape: tuple[int, int, int], block: ResidualBlock, prefix: str
) -> tuple[str, tuple[int, int, int]]:
    y, y_shape = _emit_conv(builder, x, shape, block.conv1, block.affine1, f"{prefix}.conv1")
    y = builder.node("Relu", [y])
    y, y_shape = _emit_conv(builder, y, y_shape, block.conv2, block.affine2, f"{prefix}.conv2")
    shortcut, s_shape = (
        (x, shape) if block.shortcut_pool is None else _emit_pool(builder, x, shape, block.shortcut_pool)
    )
    out_shape = (max(y_shape[0], s_shape[0]), max(y_shape[1], s_shape[1]), max(y_shape[2], s_shape[2]))
    y = _emit_zero_pad(builder, y, y_shape, out_shape, f"{prefix}.pad_main")
    shortcut = _emit_zero_pad(builder, shortcut, s_shape, out_shape, f"{prefix}.pad_shortcut")
    return builder.node("Relu", [builder.node("Add", [y, shortcut])]), out_shape


def _emit_zero_pad(
    builder: _GraphBuilder, x: str, shape: tuple[int, int, int], target: tuple[int, int, int], name: str
) -> str:
    """dlib's add_prev adds tensors of different sizes as if the smaller were zero-filled at the end
    (channels, rows, columns); with the input size fixed these pads are known at conversion time."""
    if shape == target:
        return x
    pads = np.asarray([0, 0, 0, 0, 0, *(t - s for t, s in zip(target, shape, strict=True))], dtype=np.int64)
    return builder.node("Pad", [x, builder.constant(name, pads)], mode="constant")


def _emit_fc(builder: _GraphBuilder, x: str, weight: Array, bias: Array | None) -> str:
    if bias is None:
        return builder.node("MatMul", [x, builder.constant("fc.weight", weight)], output=OUTPUT_NAME)
    y = builder.node("MatMul", [x, builder.constant("fc.weight", weight)])
    return builder.node("Add", [y, builder.constant("fc.bias", bias)], output=OUTPUT_NAME)
