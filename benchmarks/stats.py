"""Summary statistics for latency samples and per-round ratios."""
from __future__ import annotations

import numpy as np


def summarize(seconds) -> dict:
    """Latency figures in milliseconds (and throughput per second) from raw samples."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no samples")
    return {"runs": int(ms.size), "median_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "throughput_per_s": float(1e3 / ms.mean())}


def median_ratio(numerator, denominator) -> float:
    """Median over rounds of numerator[i] / denominator[i]: rounds ran back to back, so
    machine drift cancels within each pair."""
    a, b = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("ratio needs two equally long, non-empty series")
    return float(np.median(a / b))
