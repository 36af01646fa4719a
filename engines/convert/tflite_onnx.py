"""Convert MediaPipe .tflite SSD detectors (BlazeFace; the BlazePose detector converts too) to ONNX without TensorFlow.

The .tflite flatbuffer is read with the PyPI ``tflite`` package; weights are folded to float32 constants
with numpy (DENSIFY of CSR-sparse kernels, DEQUANTIZE of float16/int8), and every runtime op is emitted as
its ONNX equivalent in NCHW layout. The resulting graph takes ``image`` (uint8 RGB, NHWC) and returns
``boxes`` (raw SSD regressors, [N, A, K]) and ``scores`` (sigmoid of the clipped logits, [N, A]); anchor
decoding and NMS stay outside the graph.

The graph is dynamic in the batch and in the image size: both detectors are fully convolutional, so the
same weights run on a whole pyramid level of a frame instead of on 192x192 tiles of it. Heights and
widths must be multiples of the model's total stride (32: then every stride-2 convolution sees an even
size, and the explicit SAME paddings computed at the native size hold); there are A = sum over the
anchor strides of (H / stride) x (W / stride) x anchors-per-cell outputs, in row-major order per stride.
At the native size the graph computes exactly what the fixed-size model computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
"""IR 8 is the oldest that carries opset 17: it keeps the file loadable by older ONNX Runtime/TensorRT."""

INPUT_NAME = "image"
BOXES_NAME = "boxes"
SCORES_NAME = "scores"
BATCH_DIM = "N"
HEIGHT_DIM = "H"
WIDTH_DIM = "W"
ANCHOR_DIM = "A"
LOGIT_CLIP = 100.0

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)

Array = npt.NDArray[Any]

_OP_NAMES: dict[int, str] = {
    code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")
}

_NUMPY_DTYPES: dict[int, np.dtype[Any]] = {
    tflite.TensorType.FLOAT32: np.dtype("<f4"),
    tflite.TensorType.FLOAT16: np.dtype("<f2"),
    tflite.TensorType.INT32: np.dtype("<i4"),
    tflite.TensorType.INT64: np.dtype("<i8"),
    tflite.TensorType.INT16: np.dtype("<i2"),
    tflite.TensorType.INT8: np.dtype("i1"),
    tflite.TensorType.UINT8: np.dtype("u1"),
}

_INDEX_VECTORS: dict[int, Any] = {
    tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
    tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
    tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector,
}


def convert_tflite_detector(tflite_bytes: bytes, *, graph_name: str) -> onnx.ModelProto:
    """Convert a MediaPipe SSD detector .tflite to a batch- and size-dynamic ONNX model (opset 17).

    Raises ValueError naming the op or tensor when the model uses something this converter does not
    support, so that an unexpected model version fails at conversion time rather than giving wrong boxes.
    """
    model = _read_model(tflite_bytes)
    converter = _Converter(model, tflite_bytes)
    converter.convert_operators()
    graph = converter.build_graph(graph_name)
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vidx.tflite_onnx",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _read_model(data: bytes) -> Any:
    """Parse the flatbuffer; a wrong file type must fail here with a clear message, not deep inside."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (file identifier 'TFL3' missing)")
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("TFLite model has no subgraph")
    return model


@dataclasses.dataclass
class _Value:
    """A converted tensor: the ONNX names it is available under, per layout.

    4-D activations live in NCHW in the ONNX graph, but RESHAPE/CONCATENATION semantics are defined on
    TFLite's NHWC order, so a tensor may be needed in both; each layout is materialised once, on demand.
    """

    rank: int
    names: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _OpContext:
    index: int
    kind: str
    op: Any
    inputs: list[int]
    outputs: list[int]

    @property
    def node_name(self) -> str:
        return f"op{self.index:03d}_{self.kind.lower()}"


class _Converter:
    """Walks the TFLite operator list once, folding weight ops and emitting ONNX nodes."""

    def __init__(self, model: Any, data: bytes) -> None:
        self.model = model
        self.data = data
        self.graph = model.Subgraphs(0)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.constants: dict[int, Array] = {}
        self.values: dict[int, _Value] = {}
        self.handlers: dict[str, Callable[[_OpContext], None]] = {
            "DENSIFY": self._densify,
            "DEQUANTIZE": self._dequantize,
            "CONV_2D": self._conv2d,
            "DEPTHWISE_CONV_2D": self._depthwise_conv2d,
            "PAD": self._pad,
            "PADV2": self._pad,
            "ADD": self._add,
            "RESIZE_BILINEAR": self._resize_bilinear,
            "DEPTH_TO_SPACE": self._depth_to_space,
            "RESHAPE": self._reshape,
            "CONCATENATION": self._concatenation,
        }
        self.input_shape = self._check_input()
        self._emit_input_normalisation()

    def _tensor(self, index: int) -> Any:
        return self.graph.Tensors(index)

    def _tensor_name(self, index: int) -> str:
        return str(self._tensor(index).Name().decode("utf-8", "replace"))

    def _shape(self, index: int) -> tuple[int, ...]:
        tensor = self._tensor(index)
        if tensor.ShapeLength() == 0:
            return ()
        return tuple(int(d) for d in tensor.ShapeAsNumpy())

    def _check_input(self) -> tuple[int, ...]:
        """MediaPipe detectors take one float [1, H, W, 3] image; anything else is another model family."""
        if self.graph.InputsLength() != 1:
            raise ValueError(f"expected one model input, found {self.graph.InputsLength()}")
        index = int(self.graph.Inputs(0))
        shape = self._shape(index)
        if self._tensor(index).Type() != tflite.TensorType.FLOAT32:
            raise ValueError(f"input tensor {self._tensor_name(index)!r} is not float32")
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(
                f"input tensor {self._tensor_name(index)!r} has shape {shape}, expected [1,H,W,3]"
            )
        return shape

    def _emit_input_normalisation(self) -> None:
        """MediaPipe feeds RGB scaled to [-1, 1]; doing it in-graph lets callers pass decoded uint8 frames."""
        index = int(self.graph.Inputs(0))
        self._node("Cast", [INPUT_NAME], ["input/float"], "input/cast", to=TensorProto.FLOAT)
        self._node("Div", ["input/float", self._scalar("input/127.5", 127.5)], ["input/scaled"], "input/div")
        self._node("Sub", ["input/scaled", self._scalar("input/one", 1.0)], ["input/normalised"], "input/sub")
        self.values[index] = _Value(rank=4, names={"nhwc": "input/normalised"})

    def _node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        name: str,
        doc: str | None = None,
        **attrs: Any,
    ) -> None:
        self.nodes.append(
            helper.make_node(op_type, list(inputs), list(outputs), name=name, doc_string=doc, **attrs)
        )

    def _initializer(self, name: str, array: Array) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def _scalar(self, name: str, value: float) -> str:
        return self._initializer(name, np.array(value, dtype=np.float32))

    def _ints(self, name: str, values: Sequence[int] | npt.NDArray[np.integer[Any]]) -> str:
        return self._initializer(name, np.array(values, dtype=np.int64))

    def _buffer(self, index: int) -> Array | None:
        """Raw constant data of a tensor, or None for runtime tensors (buffer 0 or empty buffer)."""
        tensor = self._tensor(index)
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer is None:
            return None
        raw: Any
        if buffer.Offset() > 1:
            raw = self.data[buffer.Offset() : buffer.Offset() + buffer.Size()]
        elif buffer.DataLength() > 0:
            raw = buffer.DataAsNumpy().tobytes()
        else:
            return None
        dtype = _NUMPY_DTYPES.get(tensor.Type())
        if dtype is None:
            raise ValueError(f"tensor {self._tensor_name(index)!r} has unsupported type {tensor.Type()}")
        return np.frombuffer(raw, dtype=dtype).copy()

    def _constant(self, index: int) -> Array | None:
        """Folded value of a constant tensor; sparse tensors stay unfolded until their DENSIFY op runs."""
        if index in self.constants:
            return self.constants[index]
        if self._tensor(index).Sparsity() is not None:
            return None
        flat = self._buffer(index)
        if flat is None:
            return None
        shape = self._shape(index)
        if flat.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"tensor {self._tensor_name(index)!r}: buffer size {flat.size} != shape {shape}")
        self.constants[index] = flat.reshape(shape)
        return self.constants[index]

    def _require_constant(self, index: int, ctx: _OpContext, role: str) -> Array:
        value = self._constant(index)
        if value is None:
            raise ValueError(
                f"{ctx.kind} op {ctx.index}: {role} {self._tensor_name(index)!r} must be constant"
            )
        return value

    def _float_weight(self, index: int, ctx: _OpContext, role: str) -> npt.NDArray[np.float32]:
        value = self._require_constant(index, ctx, role)
        if value.dtype.kind != "f":
            raise ValueError(
                f"{ctx.kind} op {ctx.index}: {role} {self._tensor_name(index)!r} is "
                f"{value.dtype} (quantized kernels are not supported)"
            )
        return value.astype(np.float32)

    def convert_operators(self) -> None:
        for op_index in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(op_index)
            ctx = _OpContext(
                index=op_index,
                kind=self._op_kind(op),
                op=op,
                inputs=[int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else [],
                outputs=[int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else [],
            )
            handler = self.handlers.get(ctx.kind)
            if handler is None:
                raise ValueError(
                    f"unsupported TFLite op {ctx.kind} (operator {op_index}, output "
                    f"{self._tensor_name(ctx.outputs[0]) if ctx.outputs else '?'!r})"
                )
            handler(ctx)

    def _op_kind(self, op: Any) -> str:
        """Builtin codes above 127 live only in builtin_code; older files only fill the deprecated field."""
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == tflite.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            raise ValueError(f"unsupported custom TFLite op {custom.decode() if custom else '?'!r}")
        return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")

    def _options(self, ctx: _OpContext, options_type: Any) -> Any:
        table = ctx.op.BuiltinOptions()
        if table is None:
            raise ValueError(f"{ctx.kind} op {ctx.index} has no builtin options")
        options = options_type()
        options.Init(table.Bytes, table.Pos)
        return options

    def _runtime(self, index: int, layout: str) -> str:
        """ONNX name of a tensor in the requested layout ("nchw" or "nhwc"), inserting a Transpose once."""
        value = self.values.get(index)
        if value is None:
            constant = self._constant(index)
            if constant is None:
                raise ValueError(f"tensor {self._tensor_name(index)!r} is used before it is produced")
            return self._constant_in_layout(index, constant, layout)
        if value.rank != 4:
            layout = "nhwc"
        if layout not in value.names:
            source_layout, source = next(iter(value.names.items()))
            perm = _NHWC_TO_NCHW if source_layout == "nhwc" else _NCHW_TO_NHWC
            name = f"{source}/{layout}"
            self._node("Transpose", [source], [name], f"{source}/to_{layout}", perm=list(perm))
            value.names[layout] = name
        return value.names[layout]

    def _constant_in_layout(self, index: int, constant: Array, layout: str) -> str:
        """Constants broadcast against NHWC activations; in NCHW they need rank 4 before transposing."""
        array = constant.astype(np.float32) if constant.dtype.kind == "f" else constant
        if layout == "nchw" and array.ndim <= 4:
            array = array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(_NHWC_TO_NCHW)
        return self._initializer(f"const{index}/{layout}", array)

    def _set_output(self, ctx: _OpContext, name: str, layout: str) -> None:
        index = ctx.outputs[0]
        self.values[index] = _Value(rank=len(self._shape(index)), names={layout: name})

    def _check_float_activation(self, ctx: _OpContext) -> None:
        for index in ctx.outputs:
            if self._tensor(index).Type() != tflite.TensorType.FLOAT32:
                raise ValueError(
                    f"{ctx.kind} op {ctx.index}: output {self._tensor_name(index)!r} is not float32 "
                    "(quantized activations are not supported)"
                )

    def _activation(self, ctx: _OpContext, fused: int, source: str) -> str:
        """TFLite fuses activations into op options; ONNX needs them as separate nodes."""
        act = tflite.ActivationFunctionType
        name = ctx.node_name
        if fused == act.NONE:
            return source
        if fused == act.RELU:
            self._node("Relu", [source], [name], name)
        elif fused == act.RELU6:
            self._node(
                "Clip", [source, self._scalar("clip/0", 0.0), self._scalar("clip/6", 6.0)], [name], name
            )
        elif fused == act.RELU_N1_TO_1:
            self._node(
                "Clip", [source, self._scalar("clip/-1", -1.0), self._scalar("clip/1", 1.0)], [name], name
            )
        elif fused == act.TANH:
            self._node("Tanh", [source], [name], name)
        else:
            raise ValueError(f"{ctx.kind} op {ctx.index}: unsupported fused activation {fused}")
        return name

    def _main_output(self, ctx: _OpContext, fused: int) -> str:
        """Name of the op's own node output: suffixed when a fused activation node follows it."""
        return f"{ctx.node_name}/pre_act" if fused != tflite.ActivationFunctionType.NONE else ctx.node_name

    def _densify(self, ctx: _OpContext) -> None:
        index = ctx.inputs[0]
        tensor = self._tensor(index)
        values = self._buffer(index)
        if tensor.Sparsity() is None or values is None:
            raise ValueError(
                f"DENSIFY op {ctx.index}: input {self._tensor_name(index)!r} is not a sparse constant"
            )
        try:
            dense = _densify_sparse(values, self._shape(ctx.outputs[0]), _sparsity_levels(tensor.Sparsity()))
        except ValueError as exc:
            raise ValueError(f"DENSIFY op {ctx.index} ({self._tensor_name(index)!r}): {exc}") from exc
        self.constants[ctx.outputs[0]] = dense

    def _dequantize(self, ctx: _OpContext) -> None:
        index = ctx.inputs[0]
        value = self._require_constant(index, ctx, "input")
        if value.dtype == np.float16:
            self.constants[ctx.outputs[0]] = value.astype(np.float32)
            return
        quant = self._tensor(index).Quantization()
        if value.dtype.kind not in "iu" or quant is None or quant.ScaleLength() == 0:
            raise ValueError(
                f"DEQUANTIZE op {ctx.index}: cannot dequantize {self._tensor_name(index)!r} "
                f"({value.dtype}, no quantization parameters)"
            )
        self.constants[ctx.outputs[0]] = _affine_dequantize(value, quant)

    def _conv_pads(
        self,
        ctx: _OpContext,
        padding: int,
        stride: tuple[int, int],
        dilation: tuple[int, int],
        kernel: tuple[int, int],
    ) -> list[int]:
        """TFLite SAME puts the odd extra pixel at the end; ONNX auto_pad would too, but explicit pads
        keep the graph independent of how a runtime interprets SAME_UPPER."""
        if padding == tflite.Padding.VALID:
            return [0, 0, 0, 0]
        if padding != tflite.Padding.SAME:
            raise ValueError(f"{ctx.kind} op {ctx.index}: unknown padding mode {padding}")
        spatial = self._shape(ctx.inputs[0])[1:3]
        begins, ends = [], []
        for size, s, d, k in zip(spatial, stride, dilation, kernel, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            begins.append(total // 2)
            ends.append(total - total // 2)
        return begins + ends

    def _emit_conv(self, ctx: _OpContext, weight: npt.NDArray[np.float32], group: int, options: Any) -> None:
        stride = (int(options.StrideH()), int(options.StrideW()))
        dilation = (int(options.DilationHFactor()), int(options.DilationWFactor()))
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        pads = self._conv_pads(ctx, int(options.Padding()), stride, dilation, kernel)
        fused = int(options.FusedActivationFunction())
        inputs = [self._runtime(ctx.inputs[0], "nchw"), self._initializer(f"{ctx.node_name}/weight", weight)]
        if len(ctx.inputs) > 2 and ctx.inputs[2] >= 0:
            bias = self._float_weight(ctx.inputs[2], ctx, "bias").reshape(-1)
            inputs.append(self._initializer(f"{ctx.node_name}/bias", bias))
        output = self._main_output(ctx, fused)
        self._node(
            "Conv",
            inputs,
            [output],
            output,
            doc=self._tensor_name(ctx.outputs[0]),
            kernel_shape=list(kernel),
            strides=list(stride),
            dilations=list(dilation),
            pads=pads,
            group=group,
        )
        self._set_output(ctx, self._activation(ctx, fused, output), "nchw")

    def _conv2d(self, ctx: _OpContext) -> None:
        """OHWI kernels become OIHW; a kernel with fewer input channels than the tensor is a grouped conv."""
        self._check_float_activation(ctx)
        options = self._options(ctx, tflite.Conv2DOptions)
        kernel = self._float_weight(ctx.inputs[1], ctx, "kernel")
        channels = self._shape(ctx.inputs[0])[3]
        if kernel.ndim != 4 or channels % kernel.shape[3] != 0:
            raise ValueError(
                f"CONV_2D op {ctx.index}: kernel shape {kernel.shape} does not fit {channels} input channels"
            )
        self._emit_conv(ctx, kernel.transpose(0, 3, 1, 2), channels // kernel.shape[3], options)

    def _depthwise_conv2d(self, ctx: _OpContext) -> None:
        """A 1HWC depthwise kernel is an ONNX grouped conv with group=C_in and C_in*multiplier outputs."""
        self._check_float_activation(ctx)
        options = self._options(ctx, tflite.DepthwiseConv2DOptions)
        kernel = self._float_weight(ctx.inputs[1], ctx, "kernel")
        channels = self._shape(ctx.inputs[0])[3]
        if kernel.ndim != 4 or kernel.shape[0] != 1 or kernel.shape[3] % channels != 0:
            raise ValueError(
                f"DEPTHWISE_CONV_2D op {ctx.index}: kernel shape {kernel.shape} does not fit "
                f"{channels} input channels"
            )
        self._emit_conv(ctx, kernel.transpose(3, 0, 1, 2), channels, options)

    def _pad(self, ctx: _OpContext) -> None:
        self._check_float_activation(ctx)
        paddings = self._require_constant(ctx.inputs[1], ctx, "paddings").astype(np.int64)
        rank = len(self._shape(ctx.inputs[0]))
        if paddings.shape != (rank, 2):
            raise ValueError(f"{ctx.kind} op {ctx.index}: paddings shape {paddings.shape} for rank {rank}")
        layout = "nchw" if rank == 4 else "nhwc"
        if layout == "nchw":
            paddings = paddings[list(_NHWC_TO_NCHW)]
        inputs = [
            self._runtime(ctx.inputs[0], layout),
            self._ints(f"{ctx.node_name}/pads", paddings.T.reshape(-1)),
        ]
        if len(ctx.inputs) > 2 and ctx.inputs[2] >= 0:
            fill = self._float_weight(ctx.inputs[2], ctx, "constant value").reshape(-1)
            if fill.size != 1:
                raise ValueError(f"{ctx.kind} op {ctx.index}: constant value must be a scalar")
            inputs.append(self._scalar(f"{ctx.node_name}/value", float(fill[0])))
        self._node(
            "Pad",
            inputs,
            [ctx.node_name],
            ctx.node_name,
            doc=self._tensor_name(ctx.outputs[0]),
            mode="constant",
        )
        self._set_output(ctx, ctx.node_name, layout)

    def _add(self, ctx: _OpContext) -> None:
        self._check_float_activation(ctx)
        options = self._options(ctx, tflite.AddOptions)
        ranks = [len(self._shape(i)) for i in ctx.inputs]
        runtime_ranks = [r for i, r in zip(ctx.inputs, ranks, strict=True) if i in self.values]
        layout = "nchw" if runtime_ranks and all(r == 4 for r in runtime_ranks) else "nhwc"
        fused = int(options.FusedActivationFunction())
        output = self._main_output(ctx, fused)
        self._node(
            "Add",
            [self._runtime(i, layout) for i in ctx.inputs],
            [output],
            output,
            doc=self._tensor_name(ctx.outputs[0]),
        )
        self._set_output(ctx, self._activation(ctx, fused, output), layout)

    def _resize_bilinear(self, ctx: _OpContext) -> None:
        """A fixed output size becomes fixed scale factors, so the graph stays dynamic in batch and size."""
        self._check_float_activation(ctx)
        options = self._options(ctx, tflite.ResizeBilinearOptions)
        size = self._require_constant(ctx.inputs[1], ctx, "size").astype(np.int64).reshape(-1)
        if size.shape != (2,):
            raise ValueError(
                f"RESIZE_BILINEAR op {ctx.index}: size must have 2 elements, got {size.tolist()}"
            )
        source_hw = self._shape(ctx.inputs[0])[1:3]
        if len(source_hw) != 2 or any(o % i for o, i in zip(size.tolist(), source_hw, strict=True)):
            raise ValueError(
                f"RESIZE_BILINEAR op {ctx.index}: {list(source_hw)} -> {size.tolist()} is not an integer "
                "upscale, so it cannot be made size-dynamic"
            )
        if options.AlignCorners():
            mode = "align_corners"
        elif options.HalfPixelCenters():
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        scales = np.array([1.0, 1.0] + [o / i for o, i in zip(size.tolist(), source_hw, strict=True)], np.float32)
        name = ctx.node_name
        self._node(
            "Resize",
            [self._runtime(ctx.inputs[0], "nchw"), "", self._initializer(f"{name}/scales", scales)],
            [name],
            name,
            doc=self._tensor_name(ctx.outputs[0]),
            mode="linear",
            coordinate_transformation_mode=mode,
        )
        self._set_output(ctx, name, "nchw")

    def _depth_to_space(self, ctx: _OpContext) -> None:
        """TFLite's channel order (block row, block column, channel) is ONNX DepthToSpace mode DCR."""
        self._check_float_activation(ctx)
        options = self._options(ctx, tflite.DepthToSpaceOptions)
        self._node(
            "DepthToSpace",
            [self._runtime(ctx.inputs[0], "nchw")],
            [ctx.node_name],
            ctx.node_name,
            doc=self._tensor_name(ctx.outputs[0]),
            blocksize=int(options.BlockSize()),
            mode="DCR",
        )
        self._set_output(ctx, ctx.node_name, "nchw")

    def _reshape(self, ctx: _OpContext) -> None:
        """Only the SSD heads' flattening [1, H, W, C] -> [1, H*W*C/K, K] is supported: it becomes
        [0, -1, K], which keeps the batch (0 copies it) and the image size dynamic."""
        self._check_float_activation(ctx)
        source_shape = self._shape(ctx.inputs[0])
        target = list(self._shape(ctx.outputs[0]))
        flattens_heads = (len(source_shape) == 4 and len(target) == 3 and target[0] == source_shape[0]
                          and target[1] * target[2] == int(np.prod(source_shape[1:])))
        if not flattens_heads:
            raise ValueError(
                f"RESHAPE op {ctx.index}: {source_shape} -> {target} is not an SSD head's [1, H, W, C] -> "
                "[1, A, K] flattening, so it cannot be made batch- and size-dynamic"
            )
        target = [0, -1, target[2]]
        self._node(
            "Reshape",
            [self._runtime(ctx.inputs[0], "nhwc"), self._ints(f"{ctx.node_name}/shape", target)],
            [ctx.node_name],
            ctx.node_name,
            doc=self._tensor_name(ctx.outputs[0]),
        )
        self._set_output(ctx, ctx.node_name, "nhwc")

    def _concatenation(self, ctx: _OpContext) -> None:
        self._check_float_activation(ctx)
        options = self._options(ctx, tflite.ConcatenationOptions)
        rank = len(self._shape(ctx.outputs[0]))
        axis = int(options.Axis()) % rank
        if axis == 0:
            raise ValueError(
                f"CONCATENATION op {ctx.index}: concatenating along the batch axis is not supported"
            )
        layout = "nchw" if rank == 4 else "nhwc"
        onnx_axis = _NHWC_TO_NCHW.index(axis) if layout == "nchw" else axis
        fused = int(options.FusedActivationFunction())
        output = self._main_output(ctx, fused)
        self._node(
            "Concat",
            [self._runtime(i, layout) for i in ctx.inputs],
            [output],
            output,
            doc=self._tensor_name(ctx.outputs[0]),
            axis=onnx_axis,
        )
        self._set_output(ctx, self._activation(ctx, fused, output), layout)

    def _detector_outputs(self) -> tuple[int, int]:
        """Regressors and classificators are told apart by shape: [1, A, K>1] vs [1, A, 1]."""
        outputs = [int(self.graph.Outputs(i)) for i in range(self.graph.OutputsLength())]
        described = ", ".join(f"{self._tensor_name(i)!r} {list(self._shape(i))}" for i in outputs)
        if len(outputs) != 2 or any(len(self._shape(i)) != 3 for i in outputs):
            raise ValueError(f"expected two [1, A, K] outputs (regressors, classificators), got {described}")
        scores = [i for i in outputs if self._shape(i)[2] == 1]
        boxes = [i for i in outputs if self._shape(i)[2] > 1]
        if len(scores) != 1 or len(boxes) != 1 or self._shape(scores[0])[1] != self._shape(boxes[0])[1]:
            raise ValueError(f"cannot tell regressors from classificators among outputs {described}")
        for index in outputs:
            if index not in self.values:
                raise ValueError(f"output {self._tensor_name(index)!r} is not produced by any converted op")
        return boxes[0], scores[0]

    def _rename(self, old: str, new: str) -> None:
        for node in self.nodes:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]

    def build_graph(self, graph_name: str) -> onnx.GraphProto:
        boxes_index, scores_index = self._detector_outputs()
        self._rename(self._runtime(boxes_index, "nhwc"), BOXES_NAME)
        logits = self._runtime(scores_index, "nhwc")
        self._node("Squeeze", [logits, self._ints("scores/axes", [2])], ["scores/logits"], "scores/squeeze")
        self._node(
            "Clip",
            [
                "scores/logits",
                self._scalar("scores/min", -LOGIT_CLIP),
                self._scalar("scores/max", LOGIT_CLIP),
            ],
            ["scores/clipped"],
            "scores/clip",
        )
        self._node("Sigmoid", ["scores/clipped"], [SCORES_NAME], "scores/sigmoid")
        channels = self.input_shape[3]
        coords = self._shape(boxes_index)[2]
        return helper.make_graph(
            self.nodes,
            graph_name,
            inputs=[
                helper.make_tensor_value_info(
                    INPUT_NAME, TensorProto.UINT8, [BATCH_DIM, HEIGHT_DIM, WIDTH_DIM, channels]
                )
            ],
            outputs=[
                helper.make_tensor_value_info(BOXES_NAME, TensorProto.FLOAT, [BATCH_DIM, ANCHOR_DIM, coords]),
                helper.make_tensor_value_info(SCORES_NAME, TensorProto.FLOAT, [BATCH_DIM, ANCHOR_DIM]),
            ],
            initializer=list(self.initializers.values()),
        )


@dataclasses.dataclass(frozen=True)
class _SparseLevel:
    """One traversal level of a TFLite sparse tensor: a dense size, or CSR segments and indices."""

    dim: int
    dense_size: int | None
    segments: npt.NDArray[np.int64] | None = None
    indices: npt.NDArray[np.int64] | None = None


def _sparsity_levels(sparsity: Any) -> list[_SparseLevel]:
    """Block-sparse layouts (block_map) only occur in quantized models; reject rather than mis-densify."""
    if sparsity.BlockMapLength() > 0:
        raise ValueError("block-sparse weights (block_map) are not supported")
    order = [int(d) for d in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else []
    if sparsity.DimMetadataLength() != len(order):
        raise ValueError(f"{sparsity.DimMetadataLength()} dim metadata for traversal order {order}")
    levels = []
    for level, dim in enumerate(order):
        meta = sparsity.DimMetadata(level)
        if meta.Format() == tflite.DimensionType.DENSE:
            levels.append(_SparseLevel(dim=dim, dense_size=int(meta.DenseSize())))
        elif meta.Format() == tflite.DimensionType.SPARSE_CSR:
            segments = _index_vector(meta.ArraySegmentsType(), meta.ArraySegments())
            indices = _index_vector(meta.ArrayIndicesType(), meta.ArrayIndices())
            levels.append(_SparseLevel(dim=dim, dense_size=None, segments=segments, indices=indices))
        else:
            raise ValueError(f"unknown dimension format {meta.Format()} at traversal level {level}")
    return levels


def _index_vector(kind: int, table: Any) -> npt.NDArray[np.int64]:
    vector_type = _INDEX_VECTORS.get(kind)
    if vector_type is None or table is None:
        raise ValueError(f"missing or unknown sparse index vector (type {kind})")
    vector = vector_type()
    vector.Init(table.Bytes, table.Pos)
    if vector.ValuesLength() == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(vector.ValuesAsNumpy(), dtype=np.int64)


def _densify_sparse(values: Array, shape: Sequence[int], levels: Sequence[_SparseLevel]) -> Array:
    """Expand TFLite sparse storage to a dense array, like TFLite's FormatConverter::SparseToDense.

    Walks the traversal levels breadth-first: a DENSE level multiplies every position by its size, a
    SPARSE_CSR level replaces each position p by the index range segments[p]:segments[p+1]. The final
    positions index `values`; the accumulated per-level coordinates say where each value goes.
    """
    if sorted(level.dim for level in levels) != list(range(len(shape))):
        raise ValueError(
            f"traversal order {[level.dim for level in levels]} is not a permutation of the {len(shape)} dims"
        )
    positions = np.zeros(1, dtype=np.int64)
    coords: dict[int, npt.NDArray[np.int64]] = {}
    for level in levels:
        if level.dense_size is not None:
            if level.dense_size != shape[level.dim]:
                raise ValueError(f"dense size {level.dense_size} != dim {level.dim} size {shape[level.dim]}")
            size = level.dense_size
            coords = {d: np.repeat(c, size) for d, c in coords.items()}
            coords[level.dim] = np.tile(np.arange(size, dtype=np.int64), positions.size)
            positions = (positions[:, None] * size + np.arange(size, dtype=np.int64)).reshape(-1)
            continue
        segments, indices = level.segments, level.indices
        if segments is None or indices is None or (positions.size and positions.max() + 1 >= segments.size):
            raise ValueError(f"CSR segments too short for dim {level.dim}")
        starts, ends = segments[positions], segments[positions + 1]
        counts = ends - starts
        if np.any(counts < 0) or (ends.size and ends.max() > indices.size):
            raise ValueError(f"inconsistent CSR segments for dim {level.dim}")
        offsets = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = np.repeat(starts, counts) + offsets
        coords = {d: np.repeat(c, counts) for d, c in coords.items()}
        coords[level.dim] = indices[positions]
        if np.any((coords[level.dim] < 0) | (coords[level.dim] >= shape[level.dim])):
            raise ValueError(f"CSR index out of range for dim {level.dim} of size {shape[level.dim]}")
    if positions.size != values.size:
        raise ValueError(f"{values.size} stored values but the sparsity metadata addresses {positions.size}")
    dense = np.zeros(tuple(shape), dtype=values.dtype)
    dense[tuple(coords[d] for d in range(len(shape)))] = values[positions]
    return dense


def _affine_dequantize(value: Array, quant: Any) -> npt.NDArray[np.float32]:
    """(q - zero_point) * scale, per tensor or per channel along quantized_dimension."""
    scale = np.asarray(quant.ScaleAsNumpy(), dtype=np.float32)
    zero = np.asarray(quant.ZeroPointAsNumpy(), dtype=np.float32) if quant.ZeroPointLength() else np.zeros(1)
    if scale.size > 1:
        axis = int(quant.QuantizedDimension())
        shape = [1] * value.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.size > 1 else zero
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
