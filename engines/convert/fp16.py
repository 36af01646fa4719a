"""An FP16 copy of an FP32 ONNX graph, for strongly typed TensorRT builds.

Weights and activations become float16; graph inputs and outputs keep their types (a Cast is added
before each float output), and the tensors that ONNX requires in float32 (Resize's roi and scales)
stay float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FLOAT32_INPUTS = {"Resize": (1, 2)}


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {
        node.input[i]
        for node in graph.node
        for i in KEEP_FLOAT32_INPUTS.get(node.op_type, ())
        if i < len(node.input) and node.input[i]
    }
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type == "Constant" and node.output[0] not in keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
    float_inputs = [i for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT]
    for inp in float_inputs:
        half = inp.name + "_fp16"
        for node in graph.node:
            node.input[:] = [half if x == inp.name else x for x in node.input]
        graph.node.insert(0, helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16))
    for output in graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = output.name + "_fp16"
        for node in graph.node:
            node.output[:] = [half if x == output.name else x for x in node.output]
            node.input[:] = [half if x == output.name else x for x in node.input]
        graph.node.append(helper.make_node("Cast", [half], [output.name], to=TensorProto.FLOAT))
    del graph.value_info[:]
    onnx.checker.check_model(out)
    return out
