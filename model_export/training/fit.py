"""--fine-tune: the last two block stages, the head convolution and the classifier learn on
cached activations of the frozen layers, BatchNorm statistics frozen.

Nothing is chosen on held-out photos: a fixed number of epochs, and the weights averaged over
the last ones (stochastic weight averaging), which needs no early stopping. Batches are read
row by row from the per-photo activation files, so memory stays at a batch, not the data set.
The state (the weights, the optimizer, the running average) is saved after every epoch, and
a resumed run ends bit for bit as the uninterrupted one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effnet_lite.progress import Progress, duration

from .checkpoint import load_state, optimizer_tensors, restore_optimizer, save_state


# block stages that learn, chosen on two of the train study's sets (250 photos, 500 new ones
# judging; Lite0): the last stage alone gave +4.2 / +0.8 points over the linear probe, the last
# two +6.8 / +2.0, the last three -1.0 on the second, and two take 2.1-2.7x one's run time
# (docs/train.md)
STAGES = 2


FORECAST_AFTER = 10     # batches timed before a long fine-tuning says how long it will take
FORECAST_OVER = 60      # seconds: shorter phases say nothing


@dataclass
class FineTuneOptions:
    epochs: int = 6                # passes over every view of every photo
    average_from: int = 3          # the weights are averaged over the epochs from this one (1-based)
    lr: float = 2e-4
    batch: int = 32
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weights: list | None = None


class Tail(nn.Module):
    """The trainable end of the network for --fine-tune: the last block stages, the head
    convolution and the classifier of an EfficientNetLite, BatchNorm in eval mode."""

    def __init__(self, model, first_stage: int):
        super().__init__()
        self.blocks = nn.Sequential(*list(model.blocks.children())[first_stage:])
        self.conv_head, self.bn2, self.classifier = model.conv_head, model.bn2, model.classifier

    def pooled(self, a):
        return F.relu6(self.bn2(self.conv_head(self.blocks(a)))).mean((2, 3))

    def forward(self, a):
        return self.classifier(self.pooled(a))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()            # the statistics stay ImageNet's: small data cannot re-estimate them
        return self


class RowReader:
    """Single rows of the per-photo .npy files, read with one seek each: a batch costs its own
    bytes, never a whole file or a memory map that grows over an epoch."""

    def __init__(self, paths: list[Path]):
        self.paths, self.layout = paths, {}

    def _layout(self, i: int):
        if i not in self.layout:
            with open(self.paths[i], "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                self.layout[i] = (f.tell(), shape[1:], dtype)
        return self.layout[i]

    def row(self, i: int, r: int) -> np.ndarray:
        offset, shape, dtype = self._layout(i)
        size = int(np.prod(shape)) * dtype.itemsize
        with open(self.paths[i], "rb") as f:
            f.seek(offset + r * size)
            return np.frombuffer(f.read(size), dtype).reshape(shape)


def pooled_features(tail: Tail, reader: RowReader, photos: int, rows: int) -> np.ndarray:
    """(photos, rows, features): the frozen tail's pooled output of every cached row."""
    out = None
    with torch.no_grad():
        tail.eval()
        for i in range(photos):
            a = torch.from_numpy(np.stack([reader.row(i, r) for r in range(rows)]).astype(np.float32))
            p = tail.pooled(a).numpy()
            if out is None:
                out = np.empty((photos, rows, p.shape[1]), np.float32)
            out[i] = p
    return out if out is not None else np.zeros((0, rows, 1), np.float32)


def fine_tune(tail: Tail, reader: RowReader, labels: np.ndarray, rows: int, opts: FineTuneOptions, seed: int,
              state_dir: Path | None, key: str, log=None, what: str = "fine-tuning") -> None:
    """Train `tail` in place; on return it holds the averaged weights. `key` names the photos
    and settings: a saved state is resumed only when it was made for the same."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(tail.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    weight = torch.tensor(opts.class_weights, dtype=torch.float32) if opts.class_weights else None
    pairs = np.stack(np.meshgrid(np.arange(len(labels)), np.arange(rows), indexing="ij"), -1).reshape(-1, 2)
    start, average, averaged = 0, None, 0
    saved = load_state(state_dir, log) if state_dir is not None else None
    if saved and saved[1].get("key") == key:
        tensors, info = saved
        tail.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("now.")})
        restore_optimizer(opt, tensors, info["optimizer"])
        average = {k[4:]: v for k, v in tensors.items() if k.startswith("avg.")} or None
        start, averaged = info["epoch"] + 1, info["averaged"]
    batches = -(-len(pairs) // opts.batch)
    t0, left = time.perf_counter(), (opts.epochs - start) * batches
    for epoch in range(start, opts.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(pairs))
        tail.train()
        with Progress(batches, f"{what}, epoch {epoch + 1}/{opts.epochs}") as bar:
            for b in range(batches):
                chosen = pairs[order[b * opts.batch:(b + 1) * opts.batch]]
                a = torch.from_numpy(np.stack([reader.row(i, r) for i, r in chosen]).astype(np.float32))
                y = torch.from_numpy(labels[chosen[:, 0]])
                opt.zero_grad()
                F.cross_entropy(tail(a), y, weight=weight, label_smoothing=opts.label_smoothing).backward()
                opt.step()
                bar.update()
                if epoch == start and b + 1 == FORECAST_AFTER and log:
                    each = (time.perf_counter() - t0) / FORECAST_AFTER
                    if each * left > FORECAST_OVER:
                        bar.clear()
                        log(f"{what}: {opts.epochs - start} epoch(s) of {batches} batches, about "
                            f"{duration(each * (left - FORECAST_AFTER))} more (measured on the first "
                            f"{FORECAST_AFTER} batches)")
        if epoch + 1 >= opts.average_from:
            now = {k: v.detach().clone() for k, v in tail.state_dict().items()}
            average = now if average is None else {k: average[k] + (now[k] - average[k]) / (averaged + 1)
                                                   if now[k].is_floating_point() else now[k] for k in now}
            averaged += 1
        if state_dir is not None:
            tensors, scalars = optimizer_tensors(opt)
            save_state(state_dir, {**{f"now.{k}": v for k, v in tail.state_dict().items()},
                                   **{f"avg.{k}": v for k, v in (average or {}).items()}, **tensors},
                       {"key": key, "epoch": epoch, "averaged": averaged, "optimizer": scalars})
    if average is not None:
        tail.load_state_dict(average)
