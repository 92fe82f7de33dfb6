"""How a trained model is judged and calibrated: on centre crops made exactly as the runtime
makes them, and every exported file through the runtime itself (decode, crop, kernels), as
the user will run it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.errors import ImageError
from effnet_lite.preprocess import preprocess
from effnet_lite.quiet import Captured

from .options import CALIB_MAX
from .report import evaluation


def every_class_in_turn(photos, seed: int) -> list:
    """Training photos ordered so that any prefix holds every class alike (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(photos.labels)
    members = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(len(photos.classes))]
    order = [m[i] for i in range(max(map(len, members))) for m in members if i < len(m)]
    return [photos.paths[i] for i in order]


def calibrate_on_training(exporter, photos, seed: int, rounding: str) -> None:
    """Calibrate `exporter` on the centre crops of up to CALIB_MAX training photos, every class in
    turn: the run and a later TrainResult.export both call this, so they write the same file."""
    crops = centre_crops(every_class_in_turn(photos, seed), exporter.config, CALIB_MAX)
    exporter.calibrate_on(crops, "training photos", rounding=rounding)


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


def _scores(path: Path, paths, threads: int | None):
    """(index, scores) of each photo the file answers, through the runtime as deployed."""
    with Captured():
        clf = Classifier.from_file(path, ClassifierOptions(num_threads=threads or os.cpu_count()))
    try:
        for i, p in enumerate(paths):
            try:
                with Captured():
                    yield i, clf.scores(clf.preprocess(p))
            except ImageError:
                continue
    finally:
        clf.close()


def evaluate_file(path: Path, photos, name, threads: int | None = None) -> dict:
    answered = list(_scores(path, photos.paths, threads))
    if not answered:
        raise ValueError(f"{path}: none of the {len(photos.paths)} photos could be read")
    idx = [i for i, _ in answered]
    return evaluation(name, np.asarray(photos.labels)[idx], np.stack([s for _, s in answered]), photos.classes,
                      [photos.paths[i] for i in idx])


def agreement(path: Path, paths, reference_top1: np.ndarray, threads: int | None = None) -> dict:
    """How often the file's top-1 is the fp32 model's, on these photos (no labels needed)."""
    same = [int(np.argmax(s)) == int(reference_top1[i]) for i, s in _scores(path, paths, threads)]
    return {"photos": len(same), "agree": int(sum(same))}
