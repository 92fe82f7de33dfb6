"""Choosing the head's penalty and the centre crop, and an estimate of accuracy that nothing was
chosen on.

- `choose`: k-fold cross-validation over the penalty grid on the photos given; the figures it
  computes chose the setting, so they are reported as such, never as what users will get.
- `choose_form`: the same for each centre crop tried (the share of the photo the deployed file
  keeps) and each scaling of the features (head.SCALINGS), keeping the crop, scaling and penalty
  of the lowest cross-validated log-loss.
- `fit_chosen`: the head as chosen, and the frozen head deployed, that head averaged with a
  linear probe's fit (`probe`): the estimate's models and the deployed one are fitted alike.
- `compare_modes`: --fine-tune-if-better's verdict, the frozen head against the fine-tuned
  network on the same held-out photos.
- `estimate`: the whole procedure (choose, then fit) repeated inside outer folds (nested
  cross-validation): every photo is answered by a model whose training and whose choice of
  penalty never saw it. On large data one held-out part does the same at a fifth of the cost.

Training rows are every view (and the centre crop) of a photo; held-out photos are judged on
their centre crop alone, as the runtime will see them. Photos are the unit of every split
(their duplicates were merged before), so no photo is on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import head as head_mod

# the penalty grid: on the public sets of the train study the choice fell within 1e-3..3e-2
STRENGTHS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FOLDS = 5
INNER_FOLDS = 3       # the choice inside each outer fold: 3 folds keep nested CV ~3x one choice
PROBE_ITER = 500      # L-BFGS steps of the probe: its penalty is weak, so it converges slower
LARGE = 2000          # photos: above this, one held-out fifth estimates instead of 5 outer folds


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number (0..k-1) per photo: each class dealt round the folds, seeded."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)          # the next class starts where this one stopped: folds even out
    return fold


def _rows(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    part = x[idx]
    return part.reshape(-1, part.shape[-1]), np.repeat(y[idx], part.shape[1])


@dataclass
class Choice:
    strength: float
    table: list = field(default_factory=list)        # per strength: cv log-loss, cv top-1
    crop: float | None = None                        # the centre crop and scaling chosen (choose_form)
    scaling: str = "feature"
    forms: list = field(default_factory=list)        # per crop and scaling: its best penalty's cv figures

    @property
    def chosen(self) -> dict:
        return next(r for r in self.table if r["strength"] == self.strength)


def choose(x: np.ndarray, y: np.ndarray, classes: int, opts: head_mod.HeadOptions, seed: int,
           k: int = FOLDS, strengths=STRENGTHS, prior=None) -> Choice:
    """The penalty with the lowest cross-validated log-loss on these photos (ties: stronger)."""
    k = max(2, min(k, int(np.bincount(y, minlength=classes).max())))
    fold = stratified_folds(y, k, seed)
    loss = np.zeros(len(strengths))
    right = np.zeros(len(strengths))
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        xr, yr = _rows(x, y, tr)
        start = None
        for i, s in enumerate(sorted(strengths, reverse=True)):       # strong to weak: warm starts
            start = head_mod.fit(xr, yr, classes, s, opts, prior=prior, start=start)
            p = start.probs(x[te, 0])
            j = strengths.index(s)
            loss[j] += head_mod.log_loss(p, y[te]) * len(te)
            right[j] += float((p.argmax(1) == y[te]).sum())
    loss, acc = loss / len(y), right / len(y)
    best = min(range(len(strengths)), key=lambda j: (round(loss[j], 6), -strengths[j]))
    return Choice(strengths[best], [{"strength": s, "cv_log_loss": float(loss[j]), "cv_top1": float(acc[j])}
                                    for j, s in enumerate(strengths)])


def choose_form(xs: dict, y: np.ndarray, classes: int, opts: head_mod.HeadOptions, seed: int,
                k: int = FOLDS, prior=None) -> Choice:
    """`choose` for each centre crop in `xs` ({crop_pct: (photos, 1 + views, d)}, which differ
    only in row 0) and each scaling, then the one whose best penalty has the lowest log-loss
    (ties: the first, the variant's crop and per-feature scaling)."""
    best = None
    forms = []
    for crop, x in xs.items():
        for scaling in head_mod.SCALINGS:
            c = choose(x, y, classes, replace(opts, scaling=scaling), seed, k, prior=prior)
            forms.append({"crop_pct": crop, "scaling": scaling, "strength": c.strength,
                          "cv_log_loss": c.chosen["cv_log_loss"], "cv_top1": c.chosen["cv_top1"]})
            c.crop, c.scaling = crop, scaling
            if best is None or round(c.chosen["cv_log_loss"], 6) < round(best.chosen["cv_log_loss"], 6):
                best = c
    best.forms = forms
    return best


def fit_chosen(x: np.ndarray, y: np.ndarray, idx: np.ndarray, classes: int, c: Choice,
               opts: head_mod.HeadOptions, prior=None) -> tuple[head_mod.Linear, head_mod.Linear]:
    """On the photos at `idx` (x: the chosen crop's): the head as `c` chose it, on every row
    (what fine-tuning starts from), and the frozen head deployed, that head averaged with a
    probe of the same photos (still one linear layer)."""
    chosen = head_mod.fit(*_rows(x, y, idx), classes, c.strength, replace(opts, scaling=c.scaling), prior=prior)
    return chosen, chosen.averaged(probe(x, y, idx, classes, opts, prior))


def probe(x: np.ndarray, y: np.ndarray, idx: np.ndarray, classes: int, opts: head_mod.HeadOptions,
          prior=None) -> head_mod.Linear:
    """The linear probe's fit: the centre crops alone, the features unscaled, a weak penalty
    (scikit-learn's C=1: 1/photos). Averaged into the frozen head: over the train study's 28
    samples, 0.26 points above the chosen head alone, and below a probe on 5 of the 22 that
    chose nothing instead of 7 (docs/train.md, "The head averaged with the probe, adopted")."""
    return head_mod.fit(x[idx, 0], y[idx], classes, 1.0 / len(idx),
                        replace(opts, scaling="none", max_iter=PROBE_ITER), prior=prior)


@dataclass
class Estimate:
    method: str                      # "5-fold nested cross-validation" or "held-out fifth"
    photos: np.ndarray               # indices of the photos answered
    probs: np.ndarray                # their probabilities, each from a model that never saw it
    choices: list                    # what each outer model chose (Choice)

    @property
    def strengths(self) -> list:
        return [c.strength for c in self.choices]

    @property
    def crops(self) -> list:
        return [c.crop for c in self.choices]

    @property
    def scalings(self) -> list:
        return [c.scaling for c in self.choices]


def held_out(n: int) -> bool:
    """Whether the estimate of `n` photos comes from one held-out fifth, not nested folds."""
    return n > LARGE


def estimate(xs: dict, y: np.ndarray, classes: int, opts: head_mod.HeadOptions, seed: int,
             prior=None, progress=None) -> Estimate:
    """`xs`: {crop_pct: features} as choose_form takes them; each outer fold chooses its own."""
    n = len(y)
    k = max(2, min(FOLDS, int(np.bincount(y, minlength=classes).max())))
    fold = stratified_folds(y, k, seed + 1)
    outer = [0] if held_out(n) else list(range(k))
    probs, answered, chosen = np.zeros((n, classes), np.float32), [], []
    for f in outer:
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        c = choose_form({crop: rows[tr] for crop, rows in xs.items()}, y[tr], classes, opts, seed, k=INNER_FOLDS,
                        prior=prior)
        x = xs[c.crop]
        _, frozen = fit_chosen(x, y, tr, classes, c, opts, prior)
        probs[te] = frozen.probs(x[te, 0])
        answered.append(te)
        chosen.append(c)
        if progress:
            progress()
    idx = np.sort(np.concatenate(answered))
    method = "held-out fifth (chose nothing)" if held_out(n) else f"{k}-fold nested cross-validation"
    return Estimate(method, idx, probs[idx], chosen)


@dataclass
class ModeChoice:
    """Frozen head against fine-tuned network on the same held-out photos (--fine-tune-if-better)."""
    photos: int
    head_right: int
    tuned_right: int
    head_log_loss: float
    tuned_log_loss: float

    @property
    def fine_tune(self) -> bool:
        """Fine-tuning is kept only if it answers more of the photos right, or as many with a lower
        log-loss: a tie keeps the head, the cheaper and the one that cannot have forgotten ImageNet."""
        return (self.tuned_right, -self.tuned_log_loss) > (self.head_right, -self.head_log_loss)

    def as_dict(self) -> dict:
        n = max(self.photos, 1)
        return {"photos": self.photos, "head_top1": self.head_right / n,
                "tuned_top1": self.tuned_right / n, "head_log_loss": self.head_log_loss,
                "tuned_log_loss": self.tuned_log_loss, "fine_tune": self.fine_tune}


@dataclass
class Modes:
    """--fine-tune-if-better's two comparisons: `choice` on one fifth (what the estimate's model
    follows), `final` on that fifth and the estimate's (what the deployed model follows)."""
    choice: ModeChoice
    final: ModeChoice

    def as_dict(self) -> dict:
        return {"by": "held-out photos: a fifth answered by each mode's model of three other fifths (the "
                      "estimate's choice), and the estimate's fifth (these figures chose the mode: they are not "
                      "an estimate)", "choice": self.choice.as_dict(), "final": self.final.as_dict()}


def compare_modes(y: np.ndarray, head_probs: np.ndarray, tuned_probs: np.ndarray) -> ModeChoice:
    """The two modes' answers to the same held-out photos `y` (none, on a handful of photos: a tie)."""
    if not len(y):
        return ModeChoice(0, 0, 0, 0.0, 0.0)
    return ModeChoice(len(y), int((head_probs.argmax(1) == y).sum()), int((tuned_probs.argmax(1) == y).sum()),
                      head_mod.log_loss(head_probs, y), head_mod.log_loss(tuned_probs, y))


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion (Wilson score): honest at 0 % and 100 % too."""
    if n == 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
