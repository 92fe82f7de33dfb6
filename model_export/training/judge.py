"""How a trained model is judged and calibrated: on centre crops made exactly as the runtime
makes them, by PyTorch and, for every exported file, by the runtime itself (decode, crop,
kernels), as the user will run it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.errors import ImageError
from effnet_lite.preprocess import preprocess
from effnet_lite.quiet import Captured

from .fit import Tail
from .report import evaluation


def pool(tail: Tail, activations: np.ndarray) -> np.ndarray:
    """Pooled features of the frozen tail (before fine-tuning) for the head phase."""
    out = []
    with torch.no_grad():
        tail.eval()
        for i in range(0, len(activations), 64):
            x = torch.from_numpy(activations[i:i + 64])
            x = torch.nn.functional.relu6(tail.bn2(tail.conv_head(tail.blocks(x))))
            out.append(x.mean((2, 3)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def every_class_in_turn(photos, seed: int) -> list:
    """Training photos ordered so that any prefix holds every class alike (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(photos.labels)
    members = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(len(photos.classes))]
    order = [m[i] for i in range(max(map(len, members))) for m in members if i < len(m)]
    return [photos.paths[i] for i in order]


def centre_crops(paths, config, limit) -> np.ndarray:
    crops = []
    for p in paths:
        if len(crops) >= limit:
            break
        try:
            crops.append(preprocess(p, config, exact=True))
        except ImageError:
            continue
    return np.stack(crops)


def evaluate_torch(model, photos, config, name) -> dict:
    probs, ys, paths = [], [], []
    mean, std = torch.tensor(model.variant.mean).view(1, 3, 1, 1), torch.tensor(model.variant.std).view(1, 3, 1, 1)
    with torch.no_grad():
        for p, y in zip(photos.paths, photos.labels):
            try:
                crop = preprocess(p, config, exact=True)
            except ImageError:
                continue
            x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255 - mean) / std
            probs.append(torch.softmax(model(x), 1)[0].numpy())
            ys.append(y)
            paths.append(p)
    return evaluation(name, np.asarray(ys), np.stack(probs), photos.classes, paths)


def evaluate_file(path: Path, photos, name) -> dict:
    with Captured():
        clf = Classifier.from_file(path, ClassifierOptions(num_threads=os.cpu_count()))
    probs, ys, paths = [], [], []
    for p, y in zip(photos.paths, photos.labels):
        try:
            with Captured():
                probs.append(clf.scores(clf.preprocess(p)))
        except ImageError:
            continue
        ys.append(y)
        paths.append(p)
    clf.close()
    return evaluation(name, np.asarray(ys), np.stack(probs), photos.classes, paths)
