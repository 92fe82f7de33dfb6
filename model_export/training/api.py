"""effnet-train as a Python API, in the shape of Model Maker's:

    from effnet_lite.model_export.training import Trainer, TrainOptions
    result = Trainer.from_folder("photos/", TrainOptions(variant="lite0")).train("my_model/")
    print(result.summary())                 # the report: what to expect, per class, thresholds
    result.evaluate("more_photos/")         # the deployed file, through the runtime
    result.export("my_model/lite0_int8.onnx", fmt="onnx")

A run: the photos are read once (unreadable files, copies and label conflicts found), the
frozen layers run once per view (cached by content), the accuracy users will get is estimated
by nested cross-validation (or a held-out fifth, or --test), the head's penalty is chosen by
cross-validation on all photos, the final model is trained on all of them, exported and
verified, and every file is judged through the runtime.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np

from effnet_lite import __version__
from effnet_lite.preprocess import PreprocessConfig

from ..calibration import torch_threads
from ..export import Exporter
from ..model import Pair
from ..weights import is_pair, load_model
from . import data as data_mod
from . import head as head_mod
from . import selection, tuning
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .duplicates import fingerprints, remember
from .inputs import Inputs
from .judge import agreement, calibrate_on_training, evaluate_file, every_class_in_turn
from .options import AGREE_MAX, EXPORTS, TrainOptions, auto_views
from .report import HEAD, PAIR, evaluation, pictures
from .result import TrainResult
from .run_folder import WORK, TrainError, prepare_output, write_split

def _log_to_stderr(message: str) -> None:
    import sys
    print(f"effnet-train: {message}", file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, photos: data_mod.Photos, options: TrainOptions | None = None,
                 test: data_mod.Photos | None = None, source=None, test_source=None, log=None):
        self.photos, self.options, self.test = photos, options or TrainOptions(), test
        self.source, self.test_source = source, test_source
        self.log = log or _log_to_stderr
        self.options.check()
        for where, what in photos.warnings + (test.warnings if test else []):
            self.log(f"warning: {where}: {what}")
        if test is not None:
            self.test = data_mod.same_classes(test, photos.classes, test_source)

    @classmethod
    def from_folder(cls, data, options: TrainOptions | None = None, test=None, log=None) -> "Trainer":
        """DATA: a folder of class sub-folders, or a CSV of path,label; `test` likewise."""
        data, test = Path(data), Path(test) if test else None
        return cls(data_mod.load(data), options, data_mod.load(test, min_classes=1) if test else None, data, test, log)

    @classmethod
    def from_pairs(cls, pairs, options: TrainOptions | None = None, test_pairs=None, log=None) -> "Trainer":
        """From [(path, class name), ...]."""
        return cls(data_mod.from_pairs(pairs), options, data_mod.from_pairs(test_pairs) if test_pairs else None,
                   log=log)

    def config(self) -> dict:
        """What decides the result: a rerun with resume must ask for the same."""
        o = self.options
        where = lambda p: str(Path(p).resolve()) if p else None    # noqa: E731
        return {"data": where(self.source), "variant": o.variant, "weights": where(o.weights),
                "init": where(o.init), "test": where(self.test_source), "views": o.views,
                "fine_tune": o.fine_tune, "fine_tune_if_better": o.fine_tune_if_better, "ensemble": o.ensemble,
                "label_smoothing": o.label_smoothing, "class_weights": o.class_weights, "seed": o.seed}

    def train(self, output, resume: bool = False) -> "TrainResult":
        return _Run(self, Path(output), resume).run()


class _Run:
    """One training run into `out`, phase by phase."""

    def __init__(self, trainer: Trainer, out: Path, resume: bool):
        self.t, self.o, self.out, self.resume, self.log = trainer, trainer.options, out, resume, trainer.log
        self.work = out / WORK
        self.seconds: dict = {}

    def run(self) -> "TrainResult":
        with torch_threads(self.o.threads) as self.torch_threads:     # restored after: it is process-wide
            return self._phases()

    def _phases(self) -> "TrainResult":
        t0 = time.perf_counter()
        self.model, self.prior = self._base_model()
        self.variant = self.model.variant
        self.config_pp = PreprocessConfig.for_variant(self.variant, self.model.input_size)
        self._photos()
        self.seconds["data"] = time.perf_counter() - t0
        self._timed("features", self._features)
        self._timed("training", self._fit)
        self._timed("export", self._export)
        self._timed("judging", self._judge)
        report = self._report()
        (self.out / "report.json").write_text(json.dumps(report, indent=1, default=_finite) + "\n", encoding="utf-8")
        try:
            pictures(report, self.out)
        except ImportError:
            self.log("warning: no pictures (matplotlib is missing: pip install 'effnet-lite-edge[train]')")
        self.log(f"done in {time.perf_counter() - t0:.0f} s: {self.files['tflite']} and the report in {self.out}")
        return TrainResult(self.out, report, self.o.threads)

    def _timed(self, name, phase):
        t = time.perf_counter()
        phase()
        self.seconds[name] = time.perf_counter() - t

    def _base_model(self):
        o = self.o
        if not o.init:
            return load_model(o.variant, o.weights), None
        sd, labels, variant = load_checkpoint(o.init)
        if is_pair(sd):
            raise TrainError(f"{o.init}: a pair of networks (effnet-train --ensemble); --init continues one network")
        if labels is None:
            raise TrainError(f"{o.init}: no class names (not an effnet-train checkpoint, and no labels.txt beside it)")
        if variant and variant != o.variant:
            raise TrainError(f"{o.init} is a {variant} model; give --variant {variant}")
        from ..weights import checkpoint_classes, create_model, load_state_dict
        model = load_state_dict(create_model(o.variant, None, checkpoint_classes(sd)), sd, str(o.init))
        w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
        known = {n: i for i, n in enumerate(labels)}
        classes = self.t.photos.classes
        weight = np.stack([w[known[c]] if c in known else np.zeros(w.shape[1], np.float32) for c in classes])
        bias = np.asarray([b[known[c]] if c in known else 0.0 for c in classes], np.float32)
        return model, head_mod.Linear(weight.astype(np.float32), bias)

    def _photos(self):
        """Every photo read once, before anything is written: unreadable files, copies and label
        conflicts; then the output folder."""
        cache = self.work if self.resume and self.work.is_dir() else None
        new = []
        prints, bad = fingerprints(self.t.photos.paths, self.config_pp, cache, "reading the photos", new)
        self.train = data_mod.clean(self.t.photos, prints, bad, self.log)
        self.test = None
        if self.t.test is not None:
            tprints, tbad = fingerprints(self.t.test.paths, self.config_pp, cache, "reading the test photos", new)
            self.test = data_mod.clean(self.t.test, tprints, tbad, self.log, minimum=0)
            data_mod.check_apart(self.train, self.test, {**prints, **tprints})
        prepare_output(self.out, self.t.config(), self.resume)
        self.work.mkdir(exist_ok=True)
        remember(self.work, new)
        write_split(self.out, {"train": self.train, "test": self.test})
        self.classes = self.train.classes
        (self.out / "labels.txt").write_text("\n".join(self.classes) + "\n", encoding="utf-8")
        self.y = np.asarray(self.train.labels, np.int64)
        counts = np.bincount(self.y, minlength=len(self.classes))
        self.head_opts = head_mod.HeadOptions(
            label_smoothing=self.o.label_smoothing,
            class_weights=(len(self.y) / (len(counts) * counts)).tolist() if self.o.class_weights == "balanced" else None)

    def _features(self):
        o, n = self.o, len(self.train.paths)
        self.views = o.views or auto_views(n)
        self.inputs = Inputs(self.model, self.config_pp, self.views, o.seed, o.threads, self.work, self.log)
        self.log(f"{n} photos x {1 + self.views} crops (the centre and {self.views} augmented view(s)"
                 + ("" if o.views else ", --views to choose") + ")"
                 + "".join(f", and the centre cut at {c:.0%} of the photo" for c in self.inputs.crops[1:])
                 + (f", {len(self.test.paths)} test photos" if self.test else ""))
        self.inputs.compute(self.train)

    def _probs(self, data: data_mod.Photos, idx=None) -> np.ndarray:
        """The fp32 model's softmax of the chosen centre crops of `data` (the training or the test
        photos): from the cached features, or after --fine-tune from the trained network itself."""
        return self.inputs.probs(data, idx, self.crop, data is not self.train, self.tuned)

    def _fit(self):
        """The estimate (nothing chosen on the photos it is measured on), the choice of the
        penalty, crop and scaling on all the photos, then the final model trained on all of them."""
        o, k = self.o, len(self.classes)
        xs = self.inputs.rows(self.train.digests)
        held_out = o.tunes or selection.held_out(len(self.y))     # (nested folds: five fine-tunings)
        self.log(f"estimating the accuracy on new photos ({'held-out fifth' if held_out else 'nested cross-validation'})")
        self.modes = None
        if o.tunes:
            self.estimate, self.modes = tuning.estimate(self, xs)
        else:
            self.estimate = selection.estimate(xs, self.y, k, self.head_opts, o.seed, self.prior)
        self.choice = selection.choose_form(xs, self.y, k, self.head_opts, o.seed, prior=self.prior)
        self.crop = self.choice.crop
        x, every = xs[self.crop], np.arange(len(self.y))
        start, head = selection.fit_chosen(x, self.y, every, k, self.choice, self.head_opts, self.prior)
        self.tuned = o.tunes and (self.modes is None or self.modes.final.fine_tune)
        self.model.classifier = (start if self.tuned else head).layer()      # fine-tuning starts from the fit alone
        if self.modes:
            m = self.modes.final
            self.log(f"{'fine-tuning' if self.tuned else 'the frozen head'} kept: on {m.photos} held-out photos the "
                     f"fine-tuned network answered {m.tuned_right} right, the frozen head {m.head_right}")
        frozen = None
        if o.ensemble:
            frozen = copy.deepcopy(self.model)
            frozen.classifier = head.layer()
        if self.tuned:
            tuning.fine_tune_on(self, every, "final")
        if frozen is not None:      # both networks answer: the deployed file holds the two
            self.model = self.inputs.model = Pair(frozen, self.model)
            self.log("both networks kept (--ensemble): the frozen head's and the fine-tuned one answer together, "
                     "their logits averaged, in one file that does twice the work per photo")
        self.model.eval()
        save_checkpoint(self.out / CHECKPOINT, self.model.state_dict(), self.classes, self.variant.name,
                        {"l2_strength": self.choice.strength, "crop_pct": self.crop, "scaling": self.choice.scaling})

    def _export(self):
        exporter = Exporter(self.variant.name, weights=self.out / CHECKPOINT, labels=self.classes, log=self.log)
        calibrate_on_training(exporter, self.train, self.o.seed, self.o.rounding)
        self.files = {}
        for key in self.o.export:
            suffix, precision, fmt, io, softmax = EXPORTS[key]
            path = self.out / f"{self.variant.name}_{suffix}"
            exporter.export(path, precision, fmt, io, softmax=softmax)
            self.files[key] = path

    def _judge(self):
        """Every file through the runtime, once: on the test photos when there are any, and its
        top-1 against the fp32 model's on training photos (agreement: no labels needed)."""
        self.test_evals = {}
        if self.test is not None and not self.tuned:     # (after fine-tuning the network judges)
            self.inputs.compute_test(self.test, self.crop)
        if self.test is not None:
            probs = self._probs(self.test)
            self.test_evals["fp32-pytorch"] = evaluation("fp32 model (checkpoint)", np.asarray(self.test.labels), probs,
                                                         self.classes, self.test.paths)
            for key, path in self.files.items():
                self.test_evals[key] = evaluate_file(path, self.test, f"{path.name} (effnet runtime)", self.o.threads)
        sample = every_class_in_turn(self.train, self.o.seed)[:AGREE_MAX]
        where = {p: i for i, p in enumerate(self.train.paths)}
        idx = [where[p] for p in sample]
        fp32 = self._probs(self.train, idx).argmax(1)
        self.agreement = {key: agreement(path, sample, fp32, self.o.threads) for key, path in self.files.items()}

    def _report(self) -> dict:
        e = self.estimate
        y = self.y[e.photos]
        est = evaluation(f"estimate: {e.method}", y, e.probs, self.classes, [self.train.paths[i] for i in e.photos])
        right = int(round(est["top1"] * est["photos"]))
        est["interval"] = selection.wilson(right, est["photos"])
        est["strengths"], est["crops"], est["scalings"] = e.strengths, e.crops, e.scalings
        if self.test_evals:
            t = self.test_evals["tflite"]
            t["interval"] = selection.wilson(int(round(t["top1"] * t["photos"])), t["photos"])
            headline = {"source": "test", "top1": t["top1"], "interval": t["interval"], "photos": t["photos"],
                        "what": f"test photos, {self.files['tflite'].name} through the runtime"}
        else:
            headline = {"source": "estimate", "top1": est["top1"], "interval": est["interval"],
                        "photos": est["photos"], "what": est["name"]}
        return {"variant": self.variant.name, "classes": self.classes, "deployed": "tflite", "headline": headline,
                "photos": {"files": len(self.t.photos.paths), "used": len(self.train.paths),
                           "test": len(self.test.paths) if self.test else 0},
                "estimate": est, "test": self.test_evals, "agreement": self.agreement,
                "chosen": {"by": f"{selection.FOLDS}-fold cross-validation on all {len(self.y)} photos "
                                 "(these figures chose the setting: they are not an estimate)",
                           "l2_strength": self.choice.strength, "table": self.choice.table,
                           "crop_pct": self.crop, "scaling": self.choice.scaling, "forms": self.choice.forms,
                           "frozen_head": "this fit averaged with a linear probe",
                           "fine_tuning_starts_from": "this fit alone" if self.o.tunes else None},
                "mode": {"kept": PAIR if self.o.ensemble
                         else "fine-tuned network" if self.tuned else HEAD,
                         **(self.modes.as_dict() if self.modes else {})}, "views": self.views,
                "files": {k: str(p) for k, p in self.files.items()},
                "rounding": self.o.rounding, "torch_threads": self.torch_threads, "checkpoint": str(self.out / CHECKPOINT),
                "seconds": self.seconds, "config": self.t.config(), "version": __version__}



def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v
