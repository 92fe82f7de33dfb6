"""Small numeric helpers shared by the runtime, the export report and effnet-eval."""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (stable)."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mean_kl(reference: np.ndarray, other: np.ndarray, eps: float = 1e-12) -> float:
    """Mean KL(reference || other) over rows of class probabilities (never below 0:
    rounding can otherwise dip a hair under it for identical inputs)."""
    kl = np.sum(reference * (np.log(reference + eps) - np.log(other + eps)), axis=-1)
    return max(float(np.mean(kl)), 0.0)
