"""Write the graph as ONNX (NCHW): fp32, or int8 in QDQ form for onnxruntime's int8 kernels.

QDQ: every activation is QuantizeLinear → DequantizeLinear; weights and int32 biases are
DequantizeLinear of integer initializers. onnxruntime fuses DQ→Conv→Q into QLinearConv
(likewise Add, GlobalAveragePool, Gemm). ReLU6 needs no node: the Q range [0, ≤6] clamps.
Activations are uint8 by default (U8S8, about twice as fast on x86 as S8S8) with the
zero points shifted by 128 - the very same real values; `activations="int8"` gives S8S8.
With `softmax`, a float Softmax after the logits makes the model output probabilities.
Weights are the pair-safe set (quantize.py), so that x86 kernels without VNNI, which add two
u8 x s8 products in int16, give the file's own answers instead of saturated ones.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from effnet_lite.metadata import METADATA_NAME

from .graph import INPUT, OUTPUT, Graph
from .quantize import QParams, QuantizedGraph

OPSET = 13
ACTIVATION_TYPES = ("uint8", "int8")
PROBABILITIES = "probabilities"


class _Builder:
    def __init__(self):
        self.nodes, self.inits = [], []

    def init(self, name, array):
        # np.asarray keeps 0-d scalars 0-d (ascontiguousarray would make them 1-d)
        self.inits.append(numpy_helper.from_array(np.array(np.asarray(array), order="C"), name))
        return name

    def node(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]


def _layer(b: _Builder, op, inputs: list, out: str, weight: str | None, bias: str | None) -> str:
    """One graph op on float tensors (fp32 model, or the float side of a QDQ pair)."""
    if op.kind in ("conv", "dwconv"):
        left, right, top, bottom = op.pads
        k = op.weight.shape[-1]
        return b.node("Conv", [inputs[0], weight, bias], [out], kernel_shape=[k, k],
                      strides=[op.stride] * 2, pads=[top, left, bottom, right],
                      group=op.weight.shape[0] if op.kind == "dwconv" else 1)
    if op.kind == "add":
        return b.node("Add", inputs, [out])
    if op.kind == "mean":
        return b.node("Flatten", [b.node("GlobalAveragePool", inputs, [out + "/gap"])], [out], axis=1)
    if op.kind == "fc":
        return b.node("Gemm", [inputs[0], weight, bias], [out], transB=1)
    raise ValueError(op.kind)


def _model(b: _Builder, graph: Graph, in_type, metadata: str, doc: str, softmax: bool) -> bytes:
    size = graph.input_size
    out = b.node("Softmax", [OUTPUT], [PROBABILITIES], axis=1) if softmax else OUTPUT
    g = helper.make_graph(
        b.nodes, f"efficientnet_{graph.variant}",
        [helper.make_tensor_value_info(INPUT, in_type, [1, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(graph.shapes[OUTPUT]))], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="effnet-lite-edge", doc_string=doc)
    model.ir_version = 8   # readable by onnxruntime >= 1.10
    helper.set_model_props(model, {METADATA_NAME: metadata})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def write_fp32(graph: Graph, metadata: str, doc: str = "", softmax: bool = False) -> bytes:
    b = _Builder()
    for op in graph.ops:
        w = b.init(op.output + "/weight", op.weight) if op.weight is not None else None
        bias = b.init(op.output + "/bias", op.bias) if op.bias is not None else None
        raw = op.output + "/conv" if op.relu6 else op.output
        y = _layer(b, op, op.inputs, raw, w, bias)
        if op.relu6:
            b.node("Clip", [y, b.init(op.output + "/min", np.float32(0)),
                            b.init(op.output + "/max", np.float32(6))], [op.output])
    return _model(b, graph, TensorProto.FLOAT, metadata, doc, softmax)


def write_int8(qg: QuantizedGraph, metadata: str, doc: str = "", activations: str = "uint8",
               softmax: bool = False, pair_safe: bool = True) -> bytes:
    """QDQ int8 model: integer image input (uint8 pixel or int8 pixel − 128), float logits
    (or probabilities) out. `pair_safe=False` writes TFLite's plain 8-bit weights instead
    (files that saturate on x86 without VNNI: for measuring that, not for use)."""
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, not {activations!r}")
    unsigned = activations == "uint8"
    act_np = np.uint8 if unsigned else np.int8
    b = _Builder()

    def qp(name) -> QParams:
        q = qg.act[name]
        return q.as_uint8() if unsigned else q

    def dq(name, src, qparams=None) -> str:
        q = qp(qparams or name)
        return b.node("DequantizeLinear", [src, b.init(name + "/scale", np.float32(q.scale)),
                                           b.init(name + "/zp", act_np(q.zero_point))], [name])

    def q_then_dq(name, src):
        q = qp(name)
        quant = b.node("QuantizeLinear", [src, b.init(name + "/qscale", np.float32(q.scale)),
                                          b.init(name + "/qzp", act_np(q.zero_point))], [name + "/q"])
        return dq(name, quant)

    def const_dq(name, values, scales):
        """Integer constant → float: per output channel (axis 0) or per tensor."""
        per_channel = np.size(scales) > 1
        zp = np.zeros(np.size(scales), values.dtype) if per_channel else values.dtype.type(0)
        sc = np.asarray(scales, np.float32) if per_channel else np.float32(np.ravel(scales)[0])
        args = {"axis": 0} if per_channel else {}
        return b.node("DequantizeLinear", [b.init(name + "/q", values), b.init(name + "/scale", sc),
                                           b.init(name + "/zp", zp)], [name], **args)

    # The graph input "input" is the integer image; ops read its dequantized twin.
    float_name = {INPUT: dq(INPUT + "/dq", INPUT, qparams=INPUT)}
    weights = qg.pair_safe if pair_safe else qg.weights
    for op in qg.graph.ops:
        w = bias = None
        if op.weight is not None:
            qw = weights[op.output]
            w = const_dq(op.output + "/weight", qw.weight, qw.scales)
            bias_scales = np.float64(qg.act[op.inputs[0]].scale) * qw.scales.astype(np.float64)
            bias = const_dq(op.output + "/bias", qw.bias, bias_scales)
        if op.output == OUTPUT:     # float logits straight from the classifier (QGemm, float out):
            _layer(b, op, [float_name.get(i, i) for i in op.inputs], OUTPUT, w, bias)
            continue                # no 8-bit rounding, so no tied classes from it
        y = _layer(b, op, [float_name.get(i, i) for i in op.inputs], op.output + "/f", w, bias)
        q_then_dq(op.output, y)
    in_type = TensorProto.UINT8 if unsigned else TensorProto.INT8
    return _model(b, qg.graph, in_type, metadata, doc, softmax)

