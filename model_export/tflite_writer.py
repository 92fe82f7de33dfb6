"""Write the graph as a TFLite flatbuffer, straight from the TFLite schema (no TensorFlow).

Layout NHWC. Convolutions use native SAME padding (TFLite computes the same asymmetric
pads as our graph) with fused RELU6; global pooling is MEAN over H, W; the classifier is
FULLY_CONNECTED. int8 models add QUANTIZE/DEQUANTIZE only for uint8 or float32 I/O.
With `softmax`, a SOFTMAX op ends the model (int8: TFLite's fixed output scale 1/256), so
the file outputs probabilities as Google's own EfficientNet-Lite files do.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from .graph import INPUT, OUTPUT, Graph
from .quantize import QParams, QuantizedGraph

IO_TYPES = ("int8", "uint8", "float32")
_NP = {tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.INT8: np.int8,
       tfl.TensorType.UINT8: np.uint8, tfl.TensorType.INT32: np.int32}
# (builtin op, version) as TensorFlow's op versioning assigns them for these types
_OPS = {
    ("conv", "fp32"): (tfl.BuiltinOperator.CONV_2D, 1),
    ("conv", "int8"): (tfl.BuiltinOperator.CONV_2D, 3),
    ("dwconv", "fp32"): (tfl.BuiltinOperator.DEPTHWISE_CONV_2D, 1),
    ("dwconv", "int8"): (tfl.BuiltinOperator.DEPTHWISE_CONV_2D, 3),
    ("add", "fp32"): (tfl.BuiltinOperator.ADD, 1),
    ("add", "int8"): (tfl.BuiltinOperator.ADD, 2),
    ("mean", "fp32"): (tfl.BuiltinOperator.MEAN, 1),
    ("mean", "int8"): (tfl.BuiltinOperator.MEAN, 2),
    ("fc", "fp32"): (tfl.BuiltinOperator.FULLY_CONNECTED, 1),
    ("fc", "int8"): (tfl.BuiltinOperator.FULLY_CONNECTED, 4),
    ("quantize", "int8"): (tfl.BuiltinOperator.QUANTIZE, 2),
    ("dequantize", "int8"): (tfl.BuiltinOperator.DEQUANTIZE, 2),
    ("softmax", "fp32"): (tfl.BuiltinOperator.SOFTMAX, 1),
    ("softmax", "int8"): (tfl.BuiltinOperator.SOFTMAX, 2),
}
# TFLite's int8 SOFTMAX kernel requires this output quantization: probabilities in 1/256 steps
SOFTMAX_QPARAMS = QParams(1.0 / 256.0, -128)


def _nhwc(shape) -> list[int]:
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 else list(shape)


class _Builder:
    def __init__(self):
        self.model = tfl.ModelT()
        self.model.version = 3
        self.model.buffers = [tfl.BufferT()]          # buffer 0: the empty sentinel
        self.model.operatorCodes, self.tensors, self.operators = [], [], []
        self.codes, self.index = {}, {}

    def buffer(self, data: bytes | None) -> int:
        b = tfl.BufferT()
        if data is not None:
            b.data = np.frombuffer(data, np.uint8)
        self.model.buffers.append(b)
        return len(self.model.buffers) - 1

    def tensor(self, name, shape, ttype, data: np.ndarray | None = None, scale=None,
               zero_point=None, axis=0) -> int:
        t = tfl.TensorT()
        t.name, t.shape, t.type = name, list(shape), ttype
        t.buffer = self.buffer(None if data is None else np.ascontiguousarray(
            data.astype(_NP[ttype])).tobytes())
        if scale is not None:
            q = tfl.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            zp = np.atleast_1d(zero_point if zero_point is not None else 0)
            q.zeroPoint = [int(z) for z in np.broadcast_to(zp, (len(q.scale),))]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def act(self, name, shape, ttype, qp: QParams | None):
        return self.tensor(name, shape, ttype, scale=qp and qp.scale, zero_point=qp and qp.zero_point)

    def op(self, key, inputs, outputs, options_type=0, options=None):
        code, version = _OPS[key]
        if (code, version) not in self.codes:
            oc = tfl.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
            self.model.operatorCodes.append(oc)
            self.codes[(code, version)] = len(self.model.operatorCodes) - 1
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[(code, version)], list(inputs), list(outputs)
        if options is not None:
            o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def softmax(self, logits: int, shape, ttype, qp: QParams | None) -> int:
        out = self.act("probabilities", shape, ttype, qp)
        o = tfl.SoftmaxOptionsT()
        o.beta = 1.0
        self.op(("softmax", "int8" if qp else "fp32"), [logits], [out], tfl.BuiltinOptions.SoftmaxOptions, o)
        return out

    def _signature(self, inputs, outputs) -> "tfl.SignatureDefT":
        """The "serving_default" signature converters write: signature runners and
        MediaPipe's inference feedback look the tensors up by it."""
        def maps(indices):
            out = []
            for i in indices:
                m = tfl.TensorMapT()
                m.name, m.tensorIndex = self.tensors[i].name, i
                out.append(m)
            return out
        sig = tfl.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        sig.inputs, sig.outputs = maps(inputs), maps(outputs)
        return sig

    def finish(self, inputs, outputs, metadata: dict[str, bytes], description: str) -> bytes:
        """The flatbuffer; `metadata` maps Model.metadata entry names to their bytes."""
        sg = tfl.SubGraphT()
        sg.tensors, sg.operators, sg.inputs, sg.outputs, sg.name = \
            self.tensors, self.operators, list(inputs), list(outputs), "main"
        self.model.subgraphs = [sg]
        self.model.signatureDefs = [self._signature(inputs, outputs)]
        self.model.description = description
        self.model.metadata = []
        for name, blob in metadata.items():
            if not blob:
                continue
            m = tfl.MetadataT()
            m.name, m.buffer = name, self.buffer(blob)
            self.model.metadata.append(m)
        fb = flatbuffers.Builder(1024 * 1024)
        fb.Finish(self.model.Pack(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())


def _conv_options(op):
    if op.kind == "dwconv":
        o, t = tfl.DepthwiseConv2DOptionsT(), tfl.BuiltinOptions.DepthwiseConv2DOptions
        o.depthMultiplier = 1
    else:
        o, t = tfl.Conv2DOptionsT(), tfl.BuiltinOptions.Conv2DOptions
    o.padding = tfl.Padding.SAME
    o.strideW = o.strideH = op.stride
    o.dilationWFactor = o.dilationHFactor = 1
    o.fusedActivationFunction = (tfl.ActivationFunctionType.RELU6 if op.relu6
                                 else tfl.ActivationFunctionType.NONE)
    return t, o


def _filter_layout(op, w: np.ndarray) -> np.ndarray:
    """OIHW → OHWI (conv) or 1HWC (depthwise); FC weights stay (out, in)."""
    if op.kind == "conv":
        return w.transpose(0, 2, 3, 1)
    if op.kind == "dwconv":
        return w.transpose(1, 2, 3, 0)
    return w


def _ops(b: _Builder, graph: Graph, qg: QuantizedGraph | None, act_type):
    """Emit the graph's ops; `qg` None means float32 throughout."""
    for op in graph.ops:
        out_shape = _nhwc(graph.shapes[op.output])
        qp = qg.act[op.output] if qg else None
        inputs = [b.index[name] for name in op.inputs]
        if op.weight is not None:
            if qg:
                w = qg.weights[op.output]
                axis = 3 if op.kind == "dwconv" else 0
                inputs.append(b.tensor(f"{op.output}/weights", _filter_layout(op, w.weight).shape,
                                       tfl.TensorType.INT8, _filter_layout(op, w.weight),
                                       w.scales, 0, axis))
                bias_scale = qg.act[op.inputs[0]].scale * w.scales.astype(np.float64)
                inputs.append(b.tensor(f"{op.output}/bias", w.bias.shape, tfl.TensorType.INT32,
                                       w.bias, bias_scale, 0, 0))
            else:
                wf = _filter_layout(op, op.weight)
                inputs.append(b.tensor(f"{op.output}/weights", wf.shape, tfl.TensorType.FLOAT32, wf))
                inputs.append(b.tensor(f"{op.output}/bias", op.bias.shape, tfl.TensorType.FLOAT32, op.bias))
        if op.kind == "mean":
            inputs.append(b.tensor(f"{op.output}/axes", [2], tfl.TensorType.INT32, np.array([1, 2])))
        out = b.act(op.output, out_shape, act_type, qp)
        precision = "int8" if qg else "fp32"
        if op.kind in ("conv", "dwconv"):
            b.op((op.kind, precision), inputs, [out], *_conv_options(op))
        elif op.kind == "add":
            o = tfl.AddOptionsT()
            o.fusedActivationFunction = tfl.ActivationFunctionType.NONE
            b.op(("add", precision), inputs, [out], tfl.BuiltinOptions.AddOptions, o)
        elif op.kind == "mean":
            o = tfl.ReducerOptionsT()
            o.keepDims = False
            b.op(("mean", precision), inputs, [out], tfl.BuiltinOptions.ReducerOptions, o)
        elif op.kind == "fc":
            o = tfl.FullyConnectedOptionsT()
            o.fusedActivationFunction = tfl.ActivationFunctionType.NONE
            b.op(("fc", precision), inputs, [out], tfl.BuiltinOptions.FullyConnectedOptions, o)


def write_fp32(graph: Graph, metadata: dict[str, bytes], description: str, softmax: bool = False) -> bytes:
    """A float32 model: NHWC normalised float input, float logits (or probabilities)."""
    b = _Builder()
    f32 = tfl.TensorType.FLOAT32
    b.act(INPUT, _nhwc(graph.input_shape), f32, None)
    _ops(b, graph, None, f32)
    out = b.index[OUTPUT]
    if softmax:
        out = b.softmax(out, _nhwc(graph.shapes[OUTPUT]), f32, None)
    return b.finish([b.index[INPUT]], [out], metadata, description)


def write_int8(qg: QuantizedGraph, metadata: dict[str, bytes], description: str, io: str = "int8",
               softmax: bool = False) -> bytes:
    """A fully integer model; `io` picks the input/output tensor type."""
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {', '.join(IO_TYPES)}, not {io!r}")
    graph, b = qg.graph, _Builder()
    in_shape, in_q = _nhwc(graph.input_shape), qg.act[INPUT]
    out_shape, out_q = _nhwc(graph.shapes[OUTPUT]), qg.act[OUTPUT]
    int8 = tfl.TensorType.INT8
    if io == "int8":
        b.act(INPUT, in_shape, int8, in_q)
        model_in = b.index[INPUT]
    else:
        outer = b.act("image", in_shape, tfl.TensorType.UINT8 if io == "uint8" else tfl.TensorType.FLOAT32,
                      in_q.as_uint8() if io == "uint8" else None)
        inner = b.act(INPUT, in_shape, int8, in_q)
        b.op(("quantize", "int8"), [outer], [inner], tfl.BuiltinOptions.QuantizeOptions, tfl.QuantizeOptionsT())
        model_in = outer
    _ops(b, graph, qg, int8)
    model_out = b.index[OUTPUT]
    if softmax:
        model_out, out_q = b.softmax(model_out, out_shape, int8, SOFTMAX_QPARAMS), SOFTMAX_QPARAMS
    if io == "uint8":
        final = b.act("scores", out_shape, tfl.TensorType.UINT8, out_q.as_uint8())
        b.op(("quantize", "int8"), [model_out], [final], tfl.BuiltinOptions.QuantizeOptions, tfl.QuantizeOptionsT())
        model_out = final
    elif io == "float32":
        final = b.act("scores", out_shape, tfl.TensorType.FLOAT32, None)
        b.op(("dequantize", "int8"), [model_out], [final], tfl.BuiltinOptions.DequantizeOptions,
             tfl.DequantizeOptionsT())
        model_out = final
    return b.finish([model_in], [model_out], metadata, description)

