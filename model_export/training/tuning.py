"""The fine-tuning part of a run (--fine-tune, --fine-tune-if-better): the estimate's model (and
the choice's), each fine-tuned from a head of its own photos, and the final fine-tuning. The
functions take the run (api._Run): its network, photos, labels and options."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np

from . import selection
from .fit import FineTuneOptions, epochs_for, fine_tune, predict

# what each fine-tuning's model is for (its state's folder is fine-tune-NAME)
TUNED = {"choice": "a model to choose the mode", "estimate": "the estimate's model", "final": "the final model"}


def fine_tune_on(run, idx: np.ndarray, name: str) -> None:
    """The run's network fine-tuned in place on the training photos at `idx`, its state kept in
    fine-tune-NAME (resumed there only for the same photos and settings)."""
    opts = FineTuneOptions(epochs=epochs_for(len(idx)), label_smoothing=run.o.label_smoothing,
                           class_weights=run.head_opts.class_weights)
    digests = [run.train.digests[i] for i in idx]
    key = hashlib.sha256(json.dumps([name, digests, asdict(opts)]).encode()).hexdigest()
    fine_tune(run.model, run.inputs.photos(run.train, idx), run.y[idx], opts, run.o.seed,
              run.work / f"fine-tune-{name}", key, run.log, f"fine-tuning {TUNED[name]}")


def estimate(run, xs) -> tuple[selection.Estimate, selection.Modes | None]:
    """The whole --fine-tune procedure on four fifths, judged on the last fifth (nested folds would
    cost five fine-tunings). With --fine-tune-if-better the procedure includes its choice: made
    on another fifth by the two modes' models of the other three fifths, then that mode's model
    of four fifths judged on the last one; the final choice (Modes.final) sees both fifths."""
    y, if_better = run.y, run.o.fine_tune_if_better
    fold = selection.stratified_folds(y, selection.FOLDS, run.o.seed + 1)
    te = np.flatnonzero(fold == 0)
    if if_better:
        aside = np.flatnonzero(fold == 1)
        _, head1, tuned1 = both_modes(run, xs, np.flatnonzero(fold > 1), aside, "choice")
        first = selection.compare_modes(y[aside], head1, tuned1)
    c, head0, tuned0 = both_modes(run, xs, np.flatnonzero(fold != 0), te, "estimate")
    probs, modes = tuned0, None
    if if_better:
        both = np.concatenate([aside, te])
        modes = selection.Modes(first, selection.compare_modes(y[both], np.concatenate([head1, head0]),
                                                               np.concatenate([tuned1, tuned0])))
        probs = tuned0 if first.fine_tune else head0
    if run.o.ensemble:
        probs = pair_probs(head0, tuned0)
    return selection.Estimate("held-out fifth (chose nothing)", te, probs, [c]), modes


def pair_probs(head: np.ndarray, tuned: np.ndarray) -> np.ndarray:
    """The two networks' answer as model.Pair gives it: the softmax of their averaged logits,
    i.e. the normalised geometric mean of their probabilities."""
    p = np.sqrt(np.clip(head, 1e-30, None) * np.clip(tuned, 1e-30, None))
    return p / p.sum(1, keepdims=True)


def both_modes(run, xs, tr, te, name: str):
    """The head as the photos at `tr` choose and fit it, then the network fine-tuned from it:
    (the head's choice, the frozen head's probabilities of the photos at `te` (selection.fit_chosen),
    the fine-tuned network's).
    The network's starting weights are restored after, but for the classifier, which the next
    head replaces."""
    model, k = run.model, len(run.classes)
    start = {n: v.clone() for n, v in model.state_dict().items() if not n.startswith("classifier.")}
    c = selection.choose_form({crop: rows[tr] for crop, rows in xs.items()}, run.y[tr], k, run.head_opts,
                              run.o.seed, prior=run.prior)
    x = xs[c.crop]
    head, frozen = selection.fit_chosen(x, run.y, tr, k, c, run.head_opts, run.prior)
    model.classifier = head.layer()
    fine_tune_on(run, tr, name)
    tuned = predict(model, run.inputs.photos(run.train, te, c.crop))
    missing, _ = model.load_state_dict(start, strict=False)
    assert all(n.startswith("classifier.") for n in missing), missing
    return c, frozen.probs(x[te, 0]), tuned
