"""int8 quantization parameters, computed once and serialized by both writers.

The TFLite int8 scheme: weights symmetric per output channel (zero point 0, ±127),
activations asymmetric per tensor, bias int32 at input scale × weight scale, ReLU6
expressed by the output range. The classifier's weights are per tensor so that the
FULLY_CONNECTED op also loads in tflite-runtime 2.14 (the Raspberry Pi runtime).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import INPUT, OUTPUT, Graph

# Integer input: int8 = pixel - 128, uint8 = pixel; the real value (pixel - 128)/127.5
# (see graph.with_pixel_input).
PIXEL_SCALE = 1.0 / 127.5


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
    weights: dict                           # op output name → QuantWeights
    calibration: dict = field(default_factory=dict)


def quantize_weights(weight: np.ndarray, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    w = weight.astype(np.float64).reshape(weight.shape[0], -1)
    amax = np.abs(w).max(1) if per_channel else np.full(w.shape[0], np.abs(w).max())
    scales = np.maximum(amax, 1e-12) / 127.0
    scales = scales.astype(np.float32).astype(np.float64)   # the scale the file stores
    q = np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8).reshape(weight.shape)
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
                   channel_means: dict | None = None) -> QuantizedGraph:
    """Turn float ranges per tensor into the int8 model (`graph` must take pixel input).
    With `channel_means` (per-channel input means from calibration), biases are corrected
    for the mean error of the rounded weights."""
    if not graph.pixel_input:
        raise ValueError("quantize a graph with integer pixel input (graph.with_pixel_input)")
    act = {INPUT: QParams(float(np.float32(PIXEL_SCALE)), 0)}
    weights = {}
    for op in graph.ops:
        lo, hi = ranges[op.output]
        if op.kind in ("conv", "dwconv") and op.relu6:
            lo, hi = 0.0, min(hi, 6.0)
        act[op.output] = QParams.from_range(lo, hi)
        if op.weight is not None:
            q, scales = quantize_weights(op.weight, per_channel=op.kind != "fc")
            in_scale = np.float64(act[op.inputs[0]].scale)
            bias_scale = in_scale * scales.astype(np.float64)
            bias = op.bias.astype(np.float64)
            if channel_means is not None and op.inputs[0] in channel_means:
                bias = bias - bias_correction(op, q, scales, channel_means[op.inputs[0]])
            bias = np.clip(np.round(bias / bias_scale), -2**31, 2**31 - 1).astype(np.int32)
            weights[op.output] = QuantWeights(q, scales, bias)
    assert OUTPUT in act
    return QuantizedGraph(graph, act, weights, dict(calibration or {}))
