"""The new classifier on frozen features: multinomial logistic regression with an L2 penalty,
fitted to convergence (L-BFGS, full batch). The fit is convex: one optimum, no epochs or
learning rate to choose, no early stopping; only the penalty's strength and the scaling below
are chosen, by cross-validation (selection.py).

Features are centred and scaled inside the fit (so one penalty grid suits every variant's
features), each by its own spread ("feature": every feature weighs the same to the penalty) or
all by their mean spread ("shared": the features' own proportions kept, the probe's view; the
better of the two differs by set, so cross-validation chooses), or not at all ("none": the
probe's fit, which selection.fit_chosen averages in), and the scaling is folded back into the
returned weights: logits = x @ weight.T + bias.
With `prior` (--init), known classes are pulled towards their earlier weights instead of
towards zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..calibration import torch_threads


@dataclass
class Linear:
    weight: np.ndarray         # (classes, features)
    bias: np.ndarray           # (classes,)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def averaged(self, other: "Linear") -> "Linear":
        """One layer whose logits are the mean of the two layers' logits."""
        return Linear((self.weight + other.weight) / 2, (self.bias + other.bias) / 2)

    def layer(self) -> torch.nn.Linear:
        """The same classifier as the network's last layer."""
        layer = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.weight))
            layer.bias.copy_(torch.from_numpy(self.bias))
        return layer


@dataclass
class HeadOptions:
    label_smoothing: float = 0.0
    class_weights: list | None = None      # per class (balanced: n / (classes x count))
    max_iter: int = 100
    scaling: str = "feature"               # one of SCALINGS


SCALINGS = ("feature", "shared")        # what cross-validation chooses between ("none": the probe's)
FLOOR = 0.1        # "feature" scaling: no feature's scale below this share of the median feature's


def fit(x: np.ndarray, y: np.ndarray, classes: int, strength: float, opts: HeadOptions,
        prior: Linear | None = None, start: Linear | None = None) -> Linear:
    """Minimise the (class-weighted) mean cross-entropy + strength/2 * |W - prior|^2 over the
    rows `x` (n, d); `start` warm-starts the search (the optimum is the same)."""
    mu = x.mean(0)
    spread = x.std(0)
    if opts.scaling == "none":
        sd = np.ones_like(spread)
    elif opts.scaling == "shared":
        sd = np.full_like(spread, spread.mean()) + 1e-6
    else:
        # floored at a tenth of the median feature's: a feature the training photos barely vary would
        # otherwise get a weight of w/1e-6 in the file (measured: 473 against a median 0.06 on 30
        # photos), and the classifier's int8 scale, set by its largest weight, would erase the rest
        sd = np.maximum(spread, FLOOR * np.median(spread)) + 1e-6
    X = ((x - mu) / sd).astype(np.float32)   # the products in numpy: its BLAS is ~3x torch's on these shapes
    n, d = X.shape
    eps = opts.label_smoothing
    target = np.full((n, classes), eps / classes, np.float32)
    target[np.arange(n), y] += 1 - eps
    c = np.asarray(opts.class_weights, np.float32)[y] if opts.class_weights else np.ones(n, np.float32)
    c /= c.sum()
    w0 = np.zeros((classes, d), np.float32) if prior is None else (prior.weight * sd).astype(np.float32)
    theta = torch.zeros(classes * (d + 1), dtype=torch.float64) if start is None else torch.from_numpy(
        np.concatenate([(start.weight * sd).ravel(), start.bias + start.weight @ mu]).astype(np.float64))
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=opts.max_iter, tolerance_grad=1e-6, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        t = theta.detach().numpy()
        w, b = t[:classes * d].reshape(classes, d).astype(np.float32), t[classes * d:].astype(np.float32)
        z = X @ w.T + b
        # floored: exp() of the far tail would be a float32 denormal, 5x slower in every product
        z = np.maximum(z - z.max(1, keepdims=True), -50.0)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        g = (np.exp(logp) - target) * c[:, None]
        value = -float((c[:, None] * target * logp).sum()) + 0.5 * strength * float(((w - w0) ** 2).sum())
        grad = np.concatenate([(g.T @ X + strength * (w - w0)).ravel(), g.sum(0)])
        theta.grad = torch.from_numpy(grad.astype(np.float64))
        return torch.tensor(value, dtype=torch.float64)
    with torch_threads(1):           # L-BFGS's own vector steps are tiny: threads only cost there
        opt.step(closure)
    t = theta.detach().numpy()
    w, b = t[:classes * d].reshape(classes, d), t[classes * d:]
    weight = w / sd
    return Linear(weight.astype(np.float32), (b - weight @ mu).astype(np.float32))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
