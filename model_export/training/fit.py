"""Fitting: the new head on cached features (full batch: small data, fast, deterministic),
then with --fine-tune the last stages too, on cached activations of the frozen layers, with
BatchNorm statistics frozen. Early stopping keeps the state with the best validation
accuracy (ties: the lower validation loss)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effnet_lite.progress import Progress

from .checkpoint import load_state, optimizer_tensors, restore_optimizer, save_state


@dataclass
class Settings:
    epochs: int = 300              # head: full-batch steps
    lr: float = 1e-2               # (3e-3 measured 1-5 points worse on the dev photos' groups)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    patience: int = 60             # epochs without a better validation accuracy
    class_weights: list | None = None
    seed: int = 0
    ft_epochs: int = 12            # --fine-tune: passes over the views
    ft_lr: float = 2e-4
    ft_batch: int = 32
    ft_patience: int = 4


@dataclass
class History:
    epoch: list = field(default_factory=list)
    phase: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    best_epoch: int = -1
    best_acc: float = -1.0
    best_loss: float = math.inf
    stopped_early: bool = False

    def record(self, phase, epoch, train_loss, val_loss, val_acc) -> bool:
        """Add an epoch; True when it is the best so far."""
        self.epoch.append(epoch)
        self.phase.append(phase)
        self.train_loss.append(float(train_loss))
        self.val_loss.append(float(val_loss))
        self.val_acc.append(float(val_acc))
        better = val_acc > self.best_acc or (val_acc == self.best_acc and val_loss < self.best_loss)
        if better:
            self.best_epoch, self.best_acc, self.best_loss = len(self.epoch) - 1, float(val_acc), float(val_loss)
        return better


def _resume(state_dir, resume: bool, phase: str, module: nn.Module, opt) -> tuple[dict | None, dict]:
    """(saved info, best state) of `phase` from the state on disk, with `module` and `opt`
    restored; (None, the module's state now) when there is nothing of that phase to resume."""
    saved = load_state(state_dir) if resume else None
    if not (saved and saved[1].get("phase") == phase):
        return None, copy.deepcopy(module.state_dict())
    tensors, info = saved
    module.load_state_dict({k[len("now."):]: v for k, v in tensors.items() if k.startswith("now.")})
    restore_optimizer(opt, tensors, info["optimizer"])
    return info, {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}


def _save(state_dir, phase: str, module: nn.Module, best: dict, opt, info: dict) -> None:
    tensors, scalars = optimizer_tensors(opt)
    save_state(state_dir, {**{f"now.{k}": v for k, v in module.state_dict().items()},
                           **{f"best.{k}": v for k, v in best.items()}, **tensors},
               {"phase": phase, "optimizer": scalars, **info})


def _weights(s: Settings):
    return torch.tensor(s.class_weights, dtype=torch.float32) if s.class_weights else None


def _loss(logits, y, s: Settings, smoothing: bool = True):
    return F.cross_entropy(logits, y, weight=_weights(s), label_smoothing=s.label_smoothing if smoothing else 0.0)


def balanced_weights(counts: list[int]) -> list[float]:
    """scikit-learn's 'balanced': n / (classes x count of the class)."""
    n, k = sum(counts), len(counts)
    return [n / (k * c) if c else 0.0 for c in counts]


def fit_head(head: nn.Linear, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, s: Settings,
             state_dir, resume: bool, history: History | None = None, keep=None) -> History:
    """Train `head` in place; on return it holds the best state. `keep(head, state, history)`
    is called with each new best state (so that an interruption can save it)."""
    torch.manual_seed(s.seed)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    XV, YV = torch.from_numpy(xv), torch.from_numpy(yv)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    history, start = history or History(), 0
    info, best = _resume(state_dir, resume, "head", head, opt)
    if info:
        history, start = History(**info["history"]), info["epoch"] + 1
    with Progress(s.epochs - start, "training the head") as bar:
        for epoch in range(start, s.epochs):
            head.train()
            opt.zero_grad()
            loss = _loss(head(X), Y, s)
            loss.backward()
            opt.step()
            head.eval()
            with torch.no_grad():
                out = head(XV)
                val_loss = float(_loss(out, YV, s, smoothing=False))
                val_acc = float((out.argmax(1) == YV).float().mean())
            if history.record("head", epoch, loss.item(), val_loss, val_acc):
                best = copy.deepcopy(head.state_dict())
                if keep:
                    keep(head, best, history)
            bar.update()
            last = epoch == s.epochs - 1
            stop = epoch - history.epoch[history.best_epoch] >= s.patience
            if epoch % 25 == 24 or last or stop:
                _save(state_dir, "head", head, best, opt, {"epoch": epoch, "history": history.__dict__})
            if stop:
                history.stopped_early = True
                break
    head.load_state_dict(best)
    return history


class Tail(nn.Module):
    """The trainable end of the network for --fine-tune: the last block stages, the head
    convolution and the classifier of an EfficientNetLite, BatchNorm in eval mode."""

    def __init__(self, model, first_stage: int):
        super().__init__()
        self.blocks = nn.Sequential(*list(model.blocks.children())[first_stage:])
        self.conv_head, self.bn2, self.classifier = model.conv_head, model.bn2, model.classifier

    def forward(self, a):
        x = F.relu6(self.bn2(self.conv_head(self.blocks(a))))
        return self.classifier(x.mean((2, 3)))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()            # the statistics stay ImageNet's: small data cannot re-estimate them
        return self


def fine_tune(tail: Tail, a: np.ndarray, y: np.ndarray, av: np.ndarray, yv: np.ndarray, s: Settings,
              state_dir, resume: bool, history: History, keep=None) -> History:
    """Train the tail on cached activations, minibatches in a seeded order."""
    torch.manual_seed(s.seed)
    A, Y, AV, YV = map(torch.from_numpy, (a, y, av, yv))
    opt = torch.optim.AdamW(tail.parameters(), lr=s.ft_lr, weight_decay=s.weight_decay)
    start, since_best = 0, 0
    info, best = _resume(state_dir, resume, "fine-tune", tail, opt)
    if info:
        history, start, since_best = History(**info["history"]), info["epoch"] + 1, info["since_best"]
    if keep:        # the whole tail's best so far (at the start: the head phase's result)
        keep(tail, best, history)
    batches = -(-len(A) // s.ft_batch)
    head_epochs = sum(p == "head" for p in history.phase)
    for epoch in range(start, s.ft_epochs):
        order = torch.from_numpy(np.random.default_rng([s.seed, epoch]).permutation(len(A)))
        tail.train()
        total = 0.0
        with Progress(batches, f"fine-tuning, epoch {epoch + 1}/{s.ft_epochs}") as bar:
            for b in range(batches):
                idx = order[b * s.ft_batch:(b + 1) * s.ft_batch]
                opt.zero_grad()
                loss = _loss(tail(A[idx]), Y[idx], s)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                bar.update()
        tail.eval()
        with torch.no_grad():
            out = torch.cat([tail(AV[i:i + 64]) for i in range(0, len(AV), 64)])
            val_loss = float(_loss(out, YV, s, smoothing=False))
            val_acc = float((out.argmax(1) == YV).float().mean())
        if history.record("fine-tune", head_epochs + epoch, total / len(A), val_loss, val_acc):
            best, since_best = copy.deepcopy(tail.state_dict()), 0
            if keep:
                keep(tail, best, history)
        else:
            since_best += 1
        _save(state_dir, "fine-tune", tail, best, opt,
              {"epoch": epoch, "since_best": since_best, "history": history.__dict__})
        if since_best >= s.ft_patience:
            history.stopped_early = True
            break
    tail.load_state_dict(best)
    return history


def new_head(classes, features, labels, imagenet, init, head_init) -> torch.nn.Linear:
    """The classifier for `classes`: rows of --init's classes where the names match; for the
    others, with --head-init imagenet, the ImageNet classes their photos resemble (the
    1000-class head's rows weighted by the mean ImageNet probabilities of the class's
    training views), else zeros."""
    head = torch.nn.Linear(features.shape[1], len(classes))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    known = {}
    if init is not None:
        names, w, b = init
        known = {n: i for i, n in enumerate(names)}
    with torch.no_grad():
        if imagenet is not None and head_init == "imagenet":
            w_in, b_in = imagenet
            probs = torch.softmax(torch.from_numpy(features) @ w_in.T + b_in, 1)
            for c in range(len(classes)):
                mean = probs[torch.from_numpy(labels == c)].mean(0)
                head.weight[c], head.bias[c] = mean @ w_in, mean @ b_in
        for c, name in enumerate(classes):
            if name in known:
                head.weight[c], head.bias[c] = init[1][known[name]], init[2][known[name]]
    return head
