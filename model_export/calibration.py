"""Calibration: images from a folder (preprocessed exactly as the runtime does) or none
(data-free), and activation ranges per tensor with a choice of estimator.

Estimators, compared on the dev photos (README, "Quantization"): `minmax` (the plain
observed range), `percentile` (99.99th), `mse` (the clipping range that minimises the
expected quantization error, rounding plus clipping, over the observed histogram).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from effnet_lite.errors import ImageError
from effnet_lite.preprocess import PreprocessConfig, preprocess
from effnet_lite.progress import Progress, track
from effnet_lite.variants import MEAN, STD

from .graph import INPUT, OUTPUT, Graph, run

ESTIMATORS = ("mse", "percentile", "minmax")
LOGIT_HEADROOM = 2.0
BINS = 2048


class CalibrationError(ValueError):
    pass


@contextmanager
def torch_threads(count: int | None):
    """torch's thread count for a block, then restored (it is process-wide). The float sums of
    calibration's forward passes depend on it, so a file is reproduced with the same count."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Files below `folder` (recursive, sorted) whose extension Pillow knows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: calibration folder does not exist")
    known = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in known and not p.name.startswith("."))


def load_calibration_images(folder, count: int, config: PreprocessConfig,
                            warn=lambda msg: print(msg, file=sys.stderr)) -> np.ndarray:
    """The first `count` readable images (sorted by path) as (N, H, W, 3) uint8 crops."""
    paths = find_images(folder)
    if not paths:
        raise CalibrationError(f"{folder}: no images found (searched recursively for "
                               "files Pillow can read)")
    crops, skipped = [], 0
    with Progress(min(count, len(paths)), "reading calibration images") as bar:
        for path in paths:
            if len(crops) >= count:
                break
            try:
                crops.append(preprocess(path, config, exact=True))
                bar.update()
            except ImageError as e:
                skipped += 1
                warn(f"warning: skipped {e}")
    if skipped:
        warn(f"warning: skipped {skipped} unreadable file(s) in {folder}")
    if not crops:
        raise CalibrationError(f"{folder}: none of the {len(paths)} image files could be read")
    return np.stack(crops)


def pixels_to_input(pixels: np.ndarray, graph: Graph) -> torch.Tensor:
    """uint8 (N, H, W, 3) crops → the graph's float NCHW input."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    if graph.pixel_input:          # see graph.with_pixel_input
        return (x - 128.0) / 127.5
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


class RangeCollector:
    """Two passes over the data: per-tensor min/max, then a histogram within them."""

    def __init__(self):
        self.lo, self.hi, self.hist = {}, {}, {}
        self.sums, self.count = {}, {}     # per-channel means, for bias correction

    def observe_minmax(self, name, t):
        lo, hi = float(t.min()), float(t.max())
        self.lo[name] = min(lo, self.lo.get(name, lo))
        self.hi[name] = max(hi, self.hi.get(name, hi))

    def observe_hist(self, name, t):
        dims = (0, 2, 3) if t.dim() == 4 else (0,)
        self.sums[name] = self.sums.get(name, 0) + t.double().sum(dims).numpy()
        self.count[name] = self.count.get(name, 0) + t.numel() // t.shape[1]
        lo, hi = self.lo[name], self.hi[name]
        flat = t.reshape(-1)
        flat = flat[flat != 0]          # exact zeros (ReLU's) are represented exactly: no error
        h = torch.histc(flat, BINS, lo, hi if hi > lo else lo + 1e-6).double().numpy()
        self.hist[name] = self.hist.get(name, 0) + h

    def channel_means(self) -> dict[str, np.ndarray]:
        return {name: self.sums[name] / self.count[name] for name in self.sums}

    def ranges(self, estimator: str) -> dict[str, tuple[float, float]]:
        """Estimated range per tensor. The logits keep their observed extremes whatever
        the estimator: clipping the winning logit would reorder the top classes."""
        out = {name: estimate_range(self.hist[name], self.lo[name], self.hi[name], estimator)
               for name in self.lo}
        out[OUTPUT] = (self.lo[OUTPUT], self.hi[OUTPUT])
        return out


def collect(graph: Graph, pixels: np.ndarray, batch: int = 16) -> RangeCollector:
    collector = RangeCollector()
    batches = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    with torch.no_grad():
        for observe, desc in ((collector.observe_minmax, "calibrating (1/2)"),
                              (collector.observe_hist, "calibrating (2/2)")):
            for b in track(batches, desc=desc):
                run(graph, pixels_to_input(b, graph), observe)
    return collector


def estimate_range(hist: np.ndarray, lo: float, hi: float, estimator: str) -> tuple[float, float]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if estimator == "minmax" or hist.sum() == 0 or hi - lo < 1e-12:
        return lo, hi
    edges = np.linspace(lo, hi, len(hist) + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    if estimator == "percentile":
        cdf = np.cumsum(hist) / hist.sum()
        new_lo = edges[np.searchsorted(cdf, 1e-4)] if lo < 0 else 0.0
        new_hi = edges[min(np.searchsorted(cdf, 1 - 1e-4) + 1, len(hist))] if hi > 0 else 0.0
        return min(new_lo, 0.0), max(new_hi, 0.0)
    if estimator != "mse":
        raise ValueError(f"unknown range estimator {estimator!r}: choose from {ESTIMATORS}")
    fractions = np.linspace(0.2, 1.0, 81)
    his = hi * fractions if hi > 0 else np.zeros(1)
    los = lo * fractions if lo < 0 else np.zeros(1)
    err = mse_errors(hist, centers, los, his)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)     # the first minimum, row-major
    return float(los[i]), float(his[j])


def mse_errors(hist: np.ndarray, centers: np.ndarray, los: np.ndarray, his: np.ndarray) -> np.ndarray:
    """Expected squared quantization error of each candidate range (los[i], his[j]) over the
    histogram: clipping below lo and above hi, plus rounding (step^2 / 12) inside. Prefix
    sums of the counts and their first two moments make each candidate O(1) rather than
    O(bins): ~500x faster on 2048-bin histograms, the same figures to rounding."""
    c0 = np.concatenate(([0.0], np.cumsum(hist)))
    c1 = np.concatenate(([0.0], np.cumsum(hist * centers)))
    c2 = np.concatenate(([0.0], np.cumsum(hist * centers ** 2)))
    a = np.searchsorted(centers, los, "left")[:, None]       # bins below lo: [0, a)
    b = np.searchsorted(centers, his, "right")[None, :]      # bins above hi: [b, n)
    l, h = los[:, None], his[None, :]
    below = l * l * c0[a] - 2 * l * c1[a] + c2[a]
    above = (c2[-1] - c2[b]) - 2 * h * (c1[-1] - c1[b]) + h * h * (c0[-1] - c0[b])
    inside = (c0[b] - c0[a]) * ((h - l) / 255.0) ** 2 / 12
    return below + above + inside


def synthetic_pixels(count: int, size: int) -> np.ndarray:
    """Blocky random images (16-pixel blocks of random colour), the same for every call:
    the first n of a larger set are the set of n."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (count, -(-size // 16), -(-size // 16), 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 16, 1), 16, 2)[:, :size, :size])


def data_free_ranges(graph: Graph, sigmas: float = 3.0, samples: int = 2000,
                     seed: int = 0) -> tuple[dict, dict]:
    """Ranges and per-channel means from the BatchNorm statistics alone (no images).

    A folded conv's output channel c is distributed as N(beta_c, gamma_c^2) on the training
    data; a range covers `sigmas` standard deviations of every channel. Residual sums add
    means and variances. Pooled features and logits are simulated from those channel
    distributions (each channel's map taken as uniform, the widest plausible spread).
    Random pooled vectors do not reach a confident image's winning logit, so the logits'
    upper end gets `LOGIT_HEADROOM`: clipping the winner reorders classes, whereas a wider
    range only coarsens the resolution.
    """
    rng = np.random.default_rng(seed)
    ranges = {INPUT: (-1.0, 1.0)}
    moments = {}
    means = {INPUT: np.zeros(3)}
    logits_of = {}      # simulated logits per classifier (and per Pair's sum of two)
    for op in graph.ops:
        if op.kind in ("conv", "dwconv"):
            mean, std = graph.bn_stats[op.output]
            moments[op.output] = (mean, std)
            lo, hi = float((mean - sigmas * std).min()), float((mean + sigmas * std).max())
            ranges[op.output] = (0.0, min(max(hi, 1e-3), 6.0)) if op.relu6 else (min(lo, 0), max(hi, 0))
            means[op.output] = (np.clip(rng.normal(mean, std, (samples, len(mean))), 0, 6).mean(0)
                                if op.relu6 else mean)
        elif op.kind == "add" and op.inputs[0] in logits_of:     # a Pair's two logits, averaged
            logits_of[op.output] = logits = logits_of[op.inputs[0]] + logits_of[op.inputs[1]]
            ranges[op.output] = _logit_range(logits)
        elif op.kind == "add":
            (m1, s1), (m2, s2) = moments[op.inputs[0]], moments[op.inputs[1]]
            mean, std = m1 + m2, np.sqrt(s1 ** 2 + s2 ** 2)
            moments[op.output] = (mean, std)
            means[op.output] = mean
            ranges[op.output] = (min(float((mean - sigmas * std).min()), 0.0),
                                 max(float((mean + sigmas * std).max()), 0.0))
        elif op.kind == "mean":
            mean, std = moments[op.inputs[0]]
            pooled = np.clip(rng.normal(mean, std, size=(samples, len(mean))), 0, 6)
            ranges[op.output] = (0.0, float(np.percentile(pooled.max(1), 99.9)))
            means[op.output] = pooled.mean(0)
        elif op.kind == "fc":
            logits_of[op.output] = logits = pooled @ op.weight.T.astype(np.float64) + op.bias
            ranges[op.output] = _logit_range(logits)
    return ranges, means


def _logit_range(logits: np.ndarray) -> tuple[float, float]:
    return (float(np.percentile(logits.min(1), 0.1)), LOGIT_HEADROOM * float(np.percentile(logits.max(1), 99.9)))
