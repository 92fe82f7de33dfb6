"""int8 quantization parameters, computed once and serialized by both writers.

The TFLite int8 scheme: weights symmetric per output channel (zero point 0, ±127),
activations asymmetric per tensor, bias int32 at input scale × weight scale, ReLU6
expressed by the output range. The classifier's weights are per tensor so that the
FULLY_CONNECTED op also loads in tflite-runtime 2.14 (the Raspberry Pi runtime).

ONNX files get a second set of weights, *pair-safe*: x86 int8 kernels without VNNI
(onnxruntime's AVX2 and AVX-512BW GEMMs) multiply uint8 activations by int8 weights with
vpmaddubsw, which adds two neighbouring products in a saturating int16. With activations up to
255, that sum stays in range if each such pair of same-sign weights adds up to at most 128 in
magnitude. Which weights are neighbours depends on the kernel's packing: for a pointwise (1x1)
convolution every kernel packs four consecutive input channels per 32-bit lane, so the pairs are
input channels (2i, 2i+1) (tests/test_onnx_int8.py checks it under an emulated Haswell: such a
pair saturates, any other does not); for the stem's 3x3 convolution and the classifier the
rule covers every pair a kernel may choose (the two largest positive weights of a channel, and
the two largest negative ones). Each channel keeps its 8-bit scale unless the rule binds, and
then takes the smallest scale that meets it (a 7-bit scale at worst). Depthwise kernels widen
to 16 bits before adding, so depthwise weights stay as TFLite's. XNNPACK widens too: .tflite
files keep the plain 8-bit weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import INPUT, OUTPUT, Graph
from .rounding import round_layer

# Integer input: int8 = pixel - 128, uint8 = pixel; the real value (pixel - 128)/127.5
# (see graph.with_pixel_input).
PIXEL_SCALE = 1.0 / 127.5
# u8 x s8 products two by two in int16: 255 x PAIR_LIMIT <= 32767
PAIR_LIMIT = 32767 // 255
BIAS_LIMIT = 2**30     # |int32 bias|, with room left for the accumulated products


@dataclass(frozen=True)
class QParams:
    """Affine int8 parameters: real = scale × (q − zero_point), q in [−128, 127]."""
    scale: float
    zero_point: int

    @classmethod
    def from_range(cls, lo: float, hi: float) -> "QParams":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
        return cls(float(np.float32(scale)), zero_point)

    def as_uint8(self) -> "QParams":
        """The same real values on uint8 (zero point + 128): exactly equivalent."""
        return QParams(self.scale, self.zero_point + 128)


@dataclass
class QuantWeights:
    weight: np.ndarray      # int8, same layout as the float op's weight
    scales: np.ndarray      # float32, one per output channel (or one for per-tensor)
    bias: np.ndarray        # int32, scale = input scale × weight scale


@dataclass
class QuantizedGraph:
    graph: Graph
    act: dict                               # tensor name → QParams
    weights: dict                           # op output name → QuantWeights (TFLite)
    calibration: dict = field(default_factory=dict)
    pair_safe: dict = field(default_factory=dict)   # the same for ONNX (see the module doc)


def adjacent_pairs(op) -> bool:
    """Whether the op's pair rule is on input channels (2i, 2i+1) (pointwise convolutions),
    rather than on any two weights of a channel (see the module doc)."""
    return op.kind == "conv" and op.weight.shape[2:] == (1, 1)


def _pair_max(q: np.ndarray, adjacent: bool) -> np.ndarray:
    """Per row of (out, K) weights, the largest same-sign pair sum as a magnitude: over the
    pairs (2i, 2i+1), or (not `adjacent`) over any two weights (the two largest of each sign)."""
    if adjacent:
        pairs = np.pad(q, ((0, 0), (0, q.shape[1] % 2))).reshape(q.shape[0], -1, 2)
        return np.maximum(np.maximum(pairs, 0).sum(2).max(1), np.maximum(-pairs, 0).sum(2).max(1))
    pos = np.sort(np.maximum(q, 0), axis=1)[:, -2:].sum(1)
    neg = np.sort(np.maximum(-q, 0), axis=1)[:, -2:].sum(1)
    return np.maximum(pos, neg)


def pair_sum(q_weight: np.ndarray, adjacent: bool = False) -> np.ndarray:
    """The largest same-sign pair of integer weights per output channel (|sum|), among the
    pairs the rule covers (`adjacent`: input channels (2i, 2i+1) of a pointwise weight)."""
    return _pair_max(q_weight.astype(np.int64).reshape(q_weight.shape[0], -1), adjacent)


def quantize_weights(weight: np.ndarray, per_channel: bool = True, pair_safe: bool = False,
                     min_scales: np.ndarray | None = None,
                     adjacent: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their scales; `pair_safe` also bounds each same-sign pair
    per output channel by PAIR_LIMIT (any two weights, or with `adjacent` input channels
    (2i, 2i+1): see the module doc); `min_scales` are lower bounds per output channel."""
    w = weight.astype(np.float64).reshape(weight.shape[0], -1)
    scales = np.maximum(np.abs(w).max(1), 1e-12) / 127.0
    if min_scales is not None:
        scales = np.maximum(scales, min_scales)
    if pair_safe:
        scales = np.maximum(scales, _pair_max(w, adjacent) / PAIR_LIMIT)
    if not per_channel:
        scales = np.full(w.shape[0], scales.max())

    def rounded(sc):
        sc = sc.astype(np.float32).astype(np.float64)   # the scale the file stores
        return np.clip(np.round(w / sc[:, None]), -127, 127), sc

    q, scales = rounded(scales)
    while pair_safe and (over := _pair_max(q, adjacent) > PAIR_LIMIT).any():  # rounding up can break the bound
        scales = scales * np.where(over if per_channel else True, 1 + 2**-10, 1)
        q, scales = rounded(scales)
    q = q.astype(np.int8).reshape(weight.shape)
    return q, (scales if per_channel else scales[:1]).astype(np.float32)


def bias_correction(op, q_weight: np.ndarray, scales: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """The mean output shift that weight rounding causes, (W_q − W)·E[x], per output
    channel (Nagel et al., 2019, "empirical bias correction"); subtract it from the bias."""
    shape = (-1,) + (1,) * (q_weight.ndim - 1)
    error = q_weight.astype(np.float64) * scales.astype(np.float64).reshape(shape) - op.weight
    if op.kind == "dwconv":
        return error.sum(axis=(1, 2, 3)) * input_mean
    if op.kind == "conv":
        return np.einsum("oihw,i->o", error, input_mean)
    return error @ input_mean


def quantize_graph(graph: Graph, ranges: dict, calibration: dict | None = None,
                   channel_means: dict | None = None, second_moments: dict | None = None,
                   on_layer=lambda: None) -> QuantizedGraph:
    """Turn float ranges per tensor into the int8 model (`graph` must take pixel input).
    With `channel_means` (per-channel input means from calibration), biases are corrected
    for the mean error of the rounded weights. With `second_moments` (rounding.py), each set
    of weights (TFLite's and the pair-safe one) is rounded to reconstruct each layer's output
    rather than to the nearest integer. `on_layer()` is called after each weighted op."""
    if not graph.pixel_input:
        raise ValueError("quantize a graph with integer pixel input (graph.with_pixel_input)")
    act = {INPUT: QParams(float(np.float32(PIXEL_SCALE)), 0)}
    weights, pair_safe = {}, {}

    def quantized(op, safe: bool) -> QuantWeights:
        in_scale = np.float64(act[op.inputs[0]].scale)
        # a channel with (almost) no weight but a large bias (BatchNorm folded into a dead
        # channel) would need an int32 bias past 2^31: a coarser weight scale keeps it within
        # 2^30, leaving the accumulator room for the products (at most K x 255 x 128 < 2^27)
        min_scales = np.abs(op.bias.astype(np.float64)) / (in_scale * BIAS_LIMIT)
        adjacent = safe and adjacent_pairs(op)
        q, scales = quantize_weights(op.weight, per_channel=op.kind != "fc", pair_safe=safe,
                                     min_scales=min_scales, adjacent=adjacent)
        if second_moments is not None:
            q = round_layer(op.weight, scales, second_moments[op.output], op.kind == "dwconv",
                            PAIR_LIMIT if safe else None, adjacent)
        bias_scale = in_scale * scales.astype(np.float64)
        bias = op.bias.astype(np.float64)
        if channel_means is not None and op.inputs[0] in channel_means:
            bias = bias - bias_correction(op, q, scales, channel_means[op.inputs[0]])
        bias = np.clip(np.round(bias / bias_scale), -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)
        return QuantWeights(q, scales, bias)

    for op in graph.ops:
        lo, hi = ranges[op.output]
        if op.kind in ("conv", "dwconv") and op.relu6:
            lo, hi = 0.0, min(hi, 6.0)
        act[op.output] = QParams.from_range(lo, hi)
        if op.weight is not None:
            weights[op.output] = quantized(op, safe=False)
            pair_safe[op.output] = (weights[op.output] if op.kind == "dwconv"
                                    else quantized(op, safe=True))
            on_layer()
    assert OUTPUT in act
    return QuantizedGraph(graph, act, weights, dict(calibration or {}), pair_safe)
