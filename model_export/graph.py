"""The intermediate graph description both writers serialize.

A list of ops in execution order over named tensors (NCHW shapes, batch 1; one line of
ops, or two branches from the input for a Pair) holding fp32 weights taken from the
BatchNorm-folded model. Quantization (quantize.py) annotates
it; the ONNX and TFLite writers only translate it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .folding import has_batchnorm
from .model import EfficientNetLite, InvertedResidual, Pair, SameConv2d

INPUT = "input"
OUTPUT = "logits"


@dataclass
class Op:
    kind: str                       # "conv" | "dwconv" | "add" | "mean" | "fc"
    inputs: list
    output: str
    weight: np.ndarray | None = None  # conv: OIHW, dwconv: (C,1,kh,kw), fc: (out,in)
    bias: np.ndarray | None = None
    stride: int = 1
    pads: tuple = (0, 0, 0, 0)       # left, right, top, bottom (TF "SAME")
    relu6: bool = False


@dataclass
class Graph:
    variant: str
    input_size: int
    ops: list
    shapes: dict                     # tensor name → NCHW shape
    pixel_input: bool = False        # input is (pixel - 128) / 127.5, see with_pixel_input
    bn_stats: dict = field(default_factory=dict)  # tensor → (mean, std) per channel, pre-ReLU

    @property
    def input_shape(self):
        return self.shapes[INPUT]


def _conv_op(conv: SameConv2d, src: str, dst: str, relu6: bool) -> Op:
    kind = "dwconv" if conv.groups > 1 else "conv"
    return Op(kind, [src], dst, conv.weight.detach().numpy().astype(np.float32).copy(),
              conv.bias.detach().numpy().astype(np.float32).copy(), conv.stride[0], conv.pads, relu6)


def build_graph(folded: EfficientNetLite | Pair, bn_source: EfficientNetLite | Pair | None = None) -> Graph:
    """Translate a BN-folded model; `bn_source` (the unfolded model) records BN statistics
    for data-free calibration. A Pair becomes two branches from the input, each ending in its
    classifier (weights halved), and an add of the two: the average of their logits."""
    if has_batchnorm(folded):
        raise ValueError("build_graph needs a BatchNorm-folded model (folding.fold_batchnorm)")
    ops: list[Op] = []
    stats: dict = {}
    if isinstance(folded, Pair):
        sources = bn_source.members if bn_source is not None else (None, None)
        ends = [_network_ops(net, src, f"m{i}/", ops, stats, half=True)
                for i, (net, src) in enumerate(zip(folded.members, sources))]
        ops.append(Op("add", ends, OUTPUT))
    else:
        _network_ops(folded, bn_source, "", ops, stats)
    size = folded.input_size
    graph = Graph(folded.variant.name, size, ops, {}, bn_stats=stats)
    with torch.no_grad():
        run(graph, torch.zeros(1, 3, size, size), lambda n, t: graph.shapes.__setitem__(n, tuple(t.shape)))
    return graph


def _network_ops(folded: EfficientNetLite, bn_source, prefix: str, ops: list, stats: dict,
                 half: bool = False) -> str:
    """Append one network's ops (its tensors named with `prefix`; the unprefixed names are
    a single network's: "pooled" and OUTPUT); returns the name of its logits."""
    counter = iter(range(10_000))

    def conv(module, bn_module, src, relu6):
        dst = f"{prefix}t{next(counter)}"
        ops.append(_conv_op(module, src, dst, relu6))
        if bn_module is not None:
            stats[dst] = (bn_module.bias.detach().numpy().astype(np.float64),
                          bn_module.weight.detach().abs().numpy().astype(np.float64))
        return dst

    src_mods = dict(bn_source.named_modules()) if bn_source is not None else {}
    x = conv(folded.conv_stem, src_mods.get("bn1"), INPUT, True)
    for name, block in folded.blocks.named_children():
        for bname, b in block.named_children():
            ref = src_mods.get(f"blocks.{name}.{bname}")
            inp = x
            if isinstance(b, InvertedResidual):
                y = conv(b.conv_pw, ref and ref.bn1, x, True)
                y = conv(b.conv_dw, ref and ref.bn2, y, True)
                y = conv(b.conv_pwl, ref and ref.bn3, y, False)
            else:
                y = conv(b.conv_dw, ref and ref.bn1, x, True)
                y = conv(b.conv_pw, ref and ref.bn2, y, False)
            if b.spec.has_residual:
                out = f"{prefix}t{next(counter)}"
                ops.append(Op("add", [inp, y], out))
                y = out
            x = y
    x = conv(folded.conv_head, src_mods.get("bn2"), x, True)
    pooled, logits = (f"{prefix}pooled", f"{prefix}logits") if prefix else ("pooled", OUTPUT)
    ops.append(Op("mean", [x], pooled))
    fc, scale = folded.classifier, 0.5 if half else 1.0
    ops.append(Op("fc", [pooled], logits, (fc.weight.detach().numpy() * scale).astype(np.float32),
                  (fc.bias.detach().numpy() * scale).astype(np.float32)))
    return logits


def truncated(graph: Graph, tensor: str) -> Graph:
    """The graph up to `tensor` (e.g. "pooled": the features, no classifier), which becomes
    its output: what a trainer runs once per photo while it fits the layers after it."""
    end = next(i for i, op in enumerate(graph.ops) if op.output == tensor)
    ops = graph.ops[:end + 1]
    ops[-1] = replace(ops[-1], output=OUTPUT)
    return replace(graph, ops=ops, shapes={**graph.shapes, OUTPUT: graph.shapes[tensor]})


def with_pixel_input(graph: Graph) -> Graph:
    """The graph for integer input: it takes r = (pixel - 128)/127.5 instead of the reference
    x = (pixel - 127.5)/127.5, so int8 input is pixel - 128 and uint8 input the pixel itself.
    r = x - 1/255 everywhere except in the stem's zero padding, so adding (1/255)·ΣW to the
    stem's bias restores the reference output exactly in the interior of the image."""
    stem = graph.ops[0]
    offset = stem.weight.astype(np.float64).sum(axis=(1, 2, 3)) / 255.0
    ops = [replace(stem, bias=(stem.bias + offset).astype(np.float32))] + graph.ops[1:]
    return replace(graph, ops=ops, pixel_input=True)


def run(graph: Graph, x: torch.Tensor, observe=None) -> torch.Tensor:
    """Execute the graph in float (NCHW); `observe(name, tensor)` sees every tensor."""
    values = {INPUT: x}
    if observe:
        observe(INPUT, x)
    for op in graph.ops:
        a = values[op.inputs[0]]
        if op.kind in ("conv", "dwconv"):
            w, b = torch.from_numpy(op.weight), torch.from_numpy(op.bias)
            left, right, top, bottom = op.pads
            if (left, top) != (right, bottom):
                a, pad = F.pad(a, (left, right, top, bottom)), (0, 0)
            else:
                pad = (top, left)
            y = F.conv2d(a, w, b, op.stride, pad, groups=a.shape[1] if op.kind == "dwconv" else 1)
            if op.relu6:
                y = torch.clamp(y, 0.0, 6.0)
        elif op.kind == "add":
            y = a + values[op.inputs[1]]
        elif op.kind == "mean":
            y = a.mean((2, 3))
        elif op.kind == "fc":
            y = F.linear(a, torch.from_numpy(op.weight), torch.from_numpy(op.bias))
        else:
            raise ValueError(f"unknown op {op.kind}")
        values[op.output] = y
        if observe:
            observe(op.output, y)
    return values[graph.ops[-1].output]
