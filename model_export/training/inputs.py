"""What a run's network sees of its photos: the cached features of every centre crop tried and of
the augmented views (the frozen backbone runs once per crop, shared by every fold), and, for
fine-tuning, the photos decoded batch by batch."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from effnet_lite.preprocess import PreprocessConfig

from . import data as data_mod
from .features import Backbone, FeatureStore
from .fit import Photos, predict
from .options import WHOLE_CROP
from .run_folder import TrainError


class Inputs:
    def __init__(self, model, config: PreprocessConfig, views: int, seed: int, threads: int | None, work, log):
        self.model, self.config, self.views, self.seed, self.threads = model, config, views, seed, threads
        self.folder, self.log = work / "features", log
        # the centre crops tried (the deployed file's, chosen with the penalty): the variant's, and whole
        self.crops = list(dict.fromkeys([config.crop_pct, WHOLE_CROP]))
        self.backbone = Backbone(model, work, threads)
        self.test_store = None

    def config_at(self, crop: float) -> PreprocessConfig:
        return replace(self.config, crop_pct=crop)

    def compute(self, train: data_mod.Photos) -> None:
        """The training photos' rows: the variant's centre crop and the views in one store, each
        other centre crop in its own."""
        items = list(zip(train.paths, train.digests))
        self.store = FeatureStore(self.backbone, self.config, self.views, self.seed, self.folder)
        bad = self.store.compute(items, "features of the photos", self.log)
        self.centre_stores = {self.crops[0]: self.store}
        for c in self.crops[1:]:
            self.centre_stores[c] = FeatureStore(self.backbone, self.config_at(c), 0, self.seed, self.folder)
            bad += self.centre_stores[c].compute(items, f"features of the photos' centre at {c:.0%}", self.log)
        changed(bad)

    def rows(self, digests) -> dict[float, np.ndarray]:
        """crop -> (photos, 1 + views, features): row 0 the centre at that crop, the same views."""
        x = self.store.stack(digests)
        xs = {self.crops[0]: x}
        for c in self.crops[1:]:
            xs[c] = x.copy()
            xs[c][:, 0] = self.centre_stores[c].stack(digests)[:, 0]
        return xs

    def compute_test(self, test: data_mod.Photos, crop: float) -> None:
        """The test photos' centre crops as the chosen crop cuts them."""
        self.test_store = FeatureStore(self.backbone, self.config_at(crop), 0, self.seed, self.folder)
        changed(self.test_store.compute(list(zip(test.paths, test.digests)), "features of the test photos", self.log))

    def photos(self, data: data_mod.Photos, idx=None, crop: float | None = None) -> Photos:
        """Photos of `data` (all, or those at `idx`) decoded batch by batch for the network: their
        views, and their centre crops cut at `crop`."""
        idx = range(len(data.paths)) if idx is None else idx
        v = self.model.variant
        return Photos([(data.paths[i], data.digests[i]) for i in idx], self.config, v.mean, v.std,
                      self.seed, self.threads, centre=self.config_at(crop) if crop else None)

    def probs(self, data: data_mod.Photos, idx, crop: float, test: bool, network: bool) -> np.ndarray:
        """The fp32 model's softmax of the centre crops of `data` (all, or those at `idx`) cut at
        `crop`: through the whole network (after fine-tuning), or its classifier on the cached rows
        (the test photos' store, or the training photos')."""
        if network:
            return predict(self.model, self.photos(data, idx, crop))
        store = self.test_store if test else self.centre_stores[crop]
        digests = data.digests if idx is None else [data.digests[i] for i in idx]
        with torch.no_grad():
            return torch.softmax(self.model.classifier(torch.from_numpy(store.stack(digests)[:, 0])), 1).numpy()


def changed(bad: list) -> None:
    if bad:        # read once already: a photo changed or vanished since
        raise TrainError(f"{bad[0][0]}: changed or removed during the run; run again with --resume")
