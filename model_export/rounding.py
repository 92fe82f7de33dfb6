"""Learned rounding: each layer's integer weights chosen to reconstruct its output on the
calibration photos, rather than each weight rounded to its nearest integer.

The method is GPTQ's (Frantar et al., 2022, after Optimal Brain Quantization): with
H = E[x xᵀ] the second moments of a layer's inputs (per output pixel, over the photos), the
output error of a row's weight error d is dᵀ H d. Columns are rounded one at a time, most
active input first, and each rounding error is spread over the columns not yet rounded
through the Cholesky factor of H⁻¹, so that later weights make up for it. Unlike AdaRound
it has no steps, learning rate or annealing to tune, and it runs in seconds rather than
minutes (measured: docs/export-and-quantization.md, "Learned rounding").

Each file keeps its scales: TFLite's 8-bit ones, and for ONNX the pair-safe ones
(quantize.py), where the pair rule is also enforced while the columns are chosen (a weight
that would break it with a weight already rounded is clamped, and the error of the clamp is
compensated like any other).
One set of integers for both would put TFLite on the pair-safe scales, which measured worse
than its nearest rounding (docs/export-and-quantization.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from effnet_lite.progress import track

from .calibration import pixels_to_input
from .graph import Graph, run

ROUNDINGS = ("nearest", "learned")
# H + DAMPING x mean(diag H) x I: keeps H invertible (dead inputs, few photos) and the
# compensation modest; GPTQ's default
DAMPING = 0.01
BLOCK = 128          # columns updated lazily, a block at a time (GPTQ's speed-up)
QMAX = 127
MOMENT_BATCH = 8     # photos per pass: a depthwise layer's taps of 8 photos take ~0.2 GB


def _input_moments(op, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(Σ over the op's input rows of x xᵀ, the number of rows) for one batch: (K, K) for
    conv and fc (K in the weight's flattened order), (C, k, k) for depthwise."""
    if op.kind == "fc":
        return x.T @ x, x.shape[0]
    n, c = x.shape[:2]
    kh, kw = op.weight.shape[2:]
    if op.kind == "conv" and (kh, kw) == (1, 1) and op.stride == 1:
        flat = x.reshape(n, c, -1)            # no copy: Σ over photos of (C, HW) (HW, C)
        return (flat @ flat.transpose(1, 2)).sum(0), flat.shape[0] * flat.shape[2]
    left, right, top, bottom = op.pads
    x = F.pad(x, (left, right, top, bottom))
    if op.kind == "conv":      # (N, C·kh·kw, L): the weight's OIHW order flattened
        cols = F.unfold(x, (kh, kw), stride=op.stride)
        return (cols @ cols.transpose(1, 2)).sum(0), n * cols.shape[2]
    rows = (x.shape[2] - kh) // op.stride + 1, (x.shape[3] - kw) // op.stride + 1
    per_channel = x.transpose(0, 1)           # (C, N, H, W): each tap a strided view of it
    taps = torch.stack([per_channel[:, :, dy:dy + op.stride * rows[0]:op.stride,
                                    dx:dx + op.stride * rows[1]:op.stride].reshape(c, -1)
                        for dy in range(kh) for dx in range(kw)], 1)
    return taps @ taps.transpose(1, 2), taps.shape[2]


def second_moments(graph: Graph, pixels: np.ndarray, batch: int = MOMENT_BATCH,
                   desc: str = "learned rounding (1/2): input statistics") -> dict:
    """op output → E[x xᵀ] of the op's input rows (float64), over every crop of `pixels`
    ((N, H, W, 3) uint8, as calibration takes them): (K, K), or (C, k, k) for depthwise ops."""
    consumers: dict = {}
    for op in graph.ops:
        if op.weight is not None:
            consumers.setdefault(op.inputs[0], []).append(op)
    sums: dict = {}
    rows: dict = {}

    def observe(name, t):
        for op in consumers.get(name, ()):
            h, n = _input_moments(op, t)         # float32 products, float64 totals
            sums[op.output] = sums.get(op.output, 0) + h.double()
            rows[op.output] = rows.get(op.output, 0) + n

    batches = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    with torch.no_grad():
        for b in track(batches, desc=desc):
            run(graph, pixels_to_input(b, graph), observe)
    return {name: (sums[name] / rows[name]).numpy() for name in sums}


def round_layer(weight: np.ndarray, scales: np.ndarray, hessian: np.ndarray, depthwise: bool,
                pair_limit: int | None, adjacent: bool = False) -> np.ndarray:
    """int8 weights (the op's layout) for per-output-channel `scales` (one for per-tensor)
    that minimise the layer's output error under `hessian`; with `pair_limit`, every
    same-sign pair of a row (with `adjacent`, every pair of columns (2i, 2i+1)) sums to at
    most that in magnitude (quantize.py's pair rule)."""
    out = weight.shape[0]
    scale = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (out,))
    target = weight.astype(np.float64).reshape(out, -1) / scale[:, None]   # in integer steps
    if depthwise:      # one small problem per channel, solved side by side
        q = _gptq(target[:, None, :], hessian, pair_limit=None)[:, 0, :]
    else:
        q = _gptq(target[None], hessian[None], pair_limit, adjacent)[0]
    return q.astype(np.int8).reshape(weight.shape)


def _gptq(w: np.ndarray, h: np.ndarray, pair_limit: int | None, adjacent: bool = False) -> np.ndarray:
    """Rounded (G, O, K) targets `w`, each group g under its own (K, K) second moments h[g].
    The pair rule (`pair_limit`) bounds each new integer by the largest one of its sign so far
    or, `adjacent`, by its partner column (2i, 2i+1) if that is rounded already."""
    w = w.copy()
    k = w.shape[2]
    h = h.copy()
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    h[:, np.arange(k), np.arange(k)] += np.where(dead, 1.0, 0.0)     # no signal: nearest
    diag = np.einsum("gii->gi", h)
    h[:, np.arange(k), np.arange(k)] += DAMPING * diag.mean(1, keepdims=True)
    # the most active inputs first (GPTQ's act-order); a stable sort keeps ties in place
    order = np.argsort(-diag, axis=1, kind="stable")
    w = np.take_along_axis(w, order[:, None, :], axis=2)
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], axis=1), order[:, None, :], axis=2)
    # U: the upper Cholesky factor of H⁻¹ (its rows give each column's compensation)
    u = _upper_cholesky_of_inverse(h)
    q = np.zeros_like(w)
    top_pos = np.zeros(w.shape[:2])        # the largest positive / negative integer so far
    top_neg = np.zeros(w.shape[:2])
    position = np.argsort(order, axis=1)   # column → its place in `order`
    groups = np.arange(w.shape[0])
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block_err = np.zeros(w.shape[:2] + (end - start,))
        for i in range(start, end):
            col = w[:, :, i]
            hi = lo = QMAX
            if pair_limit is not None and adjacent:
                partner = order[:, i] ^ 1
                at = position[groups, np.minimum(partner, k - 1)]
                rounded = ((partner < k) & (at < i))[:, None]
                other = np.where(rounded, q[groups, :, at], 0)
                hi, lo = (np.minimum(QMAX, pair_limit - np.maximum(other, 0)),
                          np.minimum(QMAX, pair_limit - np.maximum(-other, 0)))
            elif pair_limit is not None:
                hi, lo = np.minimum(QMAX, pair_limit - top_pos), np.minimum(QMAX, pair_limit - top_neg)
            qi = np.clip(np.round(col), -lo, hi)
            if pair_limit is not None and not adjacent:
                top_pos, top_neg = np.maximum(top_pos, qi), np.maximum(top_neg, -qi)
            q[:, :, i] = qi
            err = (col - qi) / u[:, i, i][:, None]
            w[:, :, i + 1:end] -= err[:, :, None] * u[:, None, i, i + 1:end]
            block_err[:, :, i - start] = err
        w[:, :, end:] -= block_err @ u[:, start:end, end:]
    return np.take_along_axis(q, position[:, None, :], axis=2)


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U with Uᵀ U = H⁻¹, for a stack of positive definite matrices. numpy for many small
    ones (depthwise: 0.4 ms for 1152 of 9 x 9), torch for a few large ones (20x numpy's
    Cholesky on one 1280 x 1280 matrix)."""
    if h.shape[-1] <= 32:
        lower_inv = np.linalg.inv(np.linalg.cholesky(h))
        return np.linalg.cholesky(np.swapaxes(lower_inv, 1, 2) @ lower_inv).swapaxes(1, 2)
    lower = torch.linalg.cholesky(torch.from_numpy(h))
    eye = torch.eye(h.shape[-1], dtype=lower.dtype).expand_as(lower)
    lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False)
    return torch.linalg.cholesky(lower_inv.transpose(1, 2) @ lower_inv, upper=True).numpy()
