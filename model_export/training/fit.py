"""--fine-tune: the whole network learns, each photo seen through a fresh augmented view every
epoch, the classifier starting from the linear head (LP-FT) and BatchNorm statistics frozen.

Measured on the train study's sets (250 photos, 499 new ones judging, Lite0, two samples
each; docs/train.md): +6.6 / +7.2 points over the linear probe on hand signs, +0.0 / -1.8 on
clothing: within the noise of training the last two stages on cached activations (which this
replaced), in half the time. Nothing is chosen on held-out photos: a one-cycle learning rate
over a fixed number of epochs, and the weights averaged over the last half of them (stochastic
weight averaging), which needs no early stopping.

Photos are decoded batch by batch, so memory is the network's and one batch's, whatever the
number of photos. A view is seeded by the run's seed, the photo's content and the epoch, and
the state (weights, optimizer, schedule, running average) is saved after every epoch: a
resumed run ends bit for bit as the uninterrupted one.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effnet_lite.cores import workers_per_core
from effnet_lite.errors import ImageError
from effnet_lite.preprocess import PreprocessConfig, load_image, normalize, preprocess
from effnet_lite.progress import Progress, duration

from .augment import random_view, view_rng
from .checkpoint import load_state, optimizer_tensors, restore_optimizer, save_state
from .run_folder import TrainError

FORECAST_AFTER = 10     # batches timed before a long fine-tuning says how long it will take
FORECAST_OVER = 60      # seconds: shorter phases say nothing
FIRST_VIEW = 1000       # the epochs' views are numbered from here: apart from the cached ones (< 64)

# epochs: 10 (as measured) up to 500 photos, then as many as keep about 5,000 photo-views,
# at least 3 (about 45 ms a view of Lite0 on 2 cores). Fewer epochs for more photos is not
# measured here; it bounds the time (10,000 photos: about 25 min a model)
EPOCHS, VIEWS_PER_RUN, MIN_EPOCHS = 10, 5000, 3


def epochs_for(photos: int) -> int:
    return max(MIN_EPOCHS, min(EPOCHS, math.ceil(VIEWS_PER_RUN / max(photos, 1))))


# photos a batch is computed in: the gradient is the batch's all the same (BatchNorm is frozen),
# at a quarter of the memory. Measured on 2 cores, a batch of 32 Lite0 photos: 1.3 s and 1.2 GB
# peak RSS in fours of 8, 1.9 s and 3.1 GB at once; Lite2 in 8s: 2.4 s, 1.8 GB
MICRO = 8


@dataclass
class FineTuneOptions:
    epochs: int = EPOCHS
    lr: float = 3e-4               # the peak of the one-cycle schedule
    warmup: float = 0.15           # of the steps, rising to the peak
    batch: int = 32                # photos a step (in parts of MICRO)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weights: list | None = None


class Photos:
    """Batches of a list of photos as network inputs (N, 3, H, W), decoded as they are needed:
    augmented views for training, the centre crop (as the runtime makes it) for judging."""

    def __init__(self, items: list[tuple[Path, str]], config: PreprocessConfig, mean, std, seed: int,
                 threads: int | None = None, centre: PreprocessConfig | None = None):
        self.items, self.config, self.mean, self.std, self.seed = items, config, mean, std, seed
        self.centre = centre or config          # the centre crop's (the views' stay the same whatever it is)
        self.workers = workers_per_core(threads)

    def __len__(self):
        return len(self.items)

    def _load(self, make, idx) -> torch.Tensor:
        try:
            with ThreadPoolExecutor(self.workers) as pool:      # decoding releases the GIL
                crops = list(pool.map(make, [self.items[i] for i in idx]))
        except ImageError as e:     # read once already: the photo changed or vanished since
            raise TrainError(f"{e}: changed or removed during the run; run again with --resume") from None
        x = np.stack([normalize(c, self.mean, self.std) for c in crops])
        # NCHW in channels-last memory: measured twice as fast through PyTorch's CPU convolutions
        return torch.from_numpy(x).permute(0, 3, 1, 2)

    def views(self, idx, epoch: int) -> torch.Tensor:
        def view(item):
            path, digest = item
            rng = view_rng(self.seed, digest, FIRST_VIEW + epoch)
            return random_view(load_image(path, self.config, draft=True), self.config, rng)
        return self._load(view, idx)

    def centres(self, idx) -> torch.Tensor:
        return self._load(lambda item: preprocess(item[0], self.centre, exact=True), idx)


def frozen_statistics(model: nn.Module) -> nn.Module:
    """Training mode, BatchNorm in eval mode: small data cannot re-estimate ImageNet's statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


def predict(model: nn.Module, photos: Photos, batch: int = 32) -> np.ndarray:
    """(photos, classes) softmax of the centre crops."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(photos), batch):
            out.append(torch.softmax(model(photos.centres(range(s, min(s + batch, len(photos))))), 1))
    return torch.cat(out).numpy()


def fine_tune(model: nn.Module, photos: Photos, labels: np.ndarray, opts: FineTuneOptions, seed: int,
              state_dir: Path | None, key: str, log=None, what: str = "fine-tuning") -> None:
    """Train `model` in place; on return it holds the averaged weights. `key` names the photos
    and settings: a saved state is resumed only when it was made for the same."""
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    batches = -(-len(labels) // opts.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, opts.lr, total_steps=opts.epochs * batches,
                                                   pct_start=opts.warmup)
    weight = torch.tensor(opts.class_weights, dtype=torch.float32) if opts.class_weights else None
    average_from = opts.epochs // 2          # (0-based): the last half of the epochs
    start, average, averaged = 0, None, 0
    saved = load_state(state_dir, log) if state_dir is not None else None
    if saved and saved[1].get("key") == key:
        tensors, info = saved
        model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("now.")})
        restore_optimizer(opt, tensors, info["optimizer"])
        schedule.load_state_dict(info["schedule"])
        average = {k[4:]: v for k, v in tensors.items() if k.startswith("avg.")} or None
        start, averaged = info["epoch"] + 1, info["averaged"]
    t0, left, done = time.perf_counter(), (opts.epochs - start) * batches, 0
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    for epoch in range(start, opts.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        frozen_statistics(model)
        with Progress(batches, f"{what}, epoch {epoch + 1}/{opts.epochs}") as bar:
            for b in range(batches):
                chosen = order[b * opts.batch:(b + 1) * opts.batch]
                x, y = photos.views(chosen, epoch), y_all[chosen]
                whole = float(weight[y].sum()) if weight is not None else float(len(y))    # (as 'mean' divides)
                opt.zero_grad()
                for m in range(0, len(y), MICRO):
                    (F.cross_entropy(model(x[m:m + MICRO]), y[m:m + MICRO], weight=weight, reduction="sum",
                                     label_smoothing=opts.label_smoothing) / whole).backward()
                opt.step()
                schedule.step()
                bar.update()
                done += 1
                if done == FORECAST_AFTER and log:
                    each = (time.perf_counter() - t0) / FORECAST_AFTER
                    if each * left > FORECAST_OVER:
                        bar.clear()
                        log(f"{what}: {opts.epochs - start} epoch(s) of {batches} batches, about "
                            f"{duration(each * (left - FORECAST_AFTER))} more (measured on the first "
                            f"{FORECAST_AFTER} batches)")
        if epoch >= average_from:
            now = {k: v.detach().clone() for k, v in model.state_dict().items()}
            average = now if average is None else {k: average[k] + (now[k] - average[k]) / (averaged + 1)
                                                   if now[k].is_floating_point() else now[k] for k in now}
            averaged += 1
        if state_dir is not None:
            tensors, scalars = optimizer_tensors(opt)
            save_state(state_dir, {**{f"now.{k}": v for k, v in model.state_dict().items()},
                                   **{f"avg.{k}": v for k, v in (average or {}).items()}, **tensors},
                       {"key": key, "epoch": epoch, "averaged": averaged, "optimizer": scalars,
                        "schedule": schedule.state_dict()})
    if average is not None:
        model.load_state_dict(average)
    model.eval()
