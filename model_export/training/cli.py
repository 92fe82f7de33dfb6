"""effnet-train: your own classifier from a folder of photos, exported for the Pi and MediaPipe.

DATA is a folder with one sub-folder per class (the class is the sub-folder's name) or a CSV
of path,label. The backbone (ImageNet weights) stays frozen by default: the new head learns
from cached features of several augmented views of each photo, so the backbone runs once
per view, not once per epoch. --fine-tune then trains the last stage too (BatchNorm
statistics frozen). --output receives the checkpoint (model.safetensors, timm's names), labels.txt,
the int8 .tflite file (--export adds the MediaPipe file, ONNX and fp32), report.json with
pictures, and the split; every exported file is judged on the validation photos through
this project's runtime, as it will run when deployed.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from effnet_lite import __version__
from effnet_lite.errors import ModelError
from effnet_lite.preprocess import PreprocessConfig
from effnet_lite.variants import VARIANTS, UnknownVariantError, get_variant

from ..calibration import CalibrationError
from ..export import ExportError, Exporter
from ..weights import WeightsError, load_model
from . import data as data_mod
from .checkpoint import CHECKPOINT, load_checkpoint, load_state, save_checkpoint, save_state
from .features import Backbone, cached_features
from .fit import History, Settings, Tail, balanced_weights, fine_tune, fit_head, new_head
from .judge import centre_crops, evaluate_file, evaluate_torch, every_class_in_turn, pool
from .report import pictures, text
from .run_folder import WORK, TrainError, prepare_output, write_split

# calibration photos, every class in turn. Measured on the dev photos' 7 groups: 50 or 100 made
# an int8 file that agrees with fp32 on 200/200 photos, all 160 on 199/200 at 1.6x the time
CALIB_MAX = 100
# the files each --export choice adds: (name suffix, precision, format, io, softmax)
EXPORTS = {
    "tflite": ("int8.tflite", "int8", "tflite", "int8", False),
    "mediapipe": ("uint8_softmax.tflite", "int8", "tflite", "uint8", True),
    "onnx": ("int8.onnx", "int8", "onnx", "uint8", False),
    "fp32": ("fp32.tflite", "fp32", "tflite", None, False),
}

EXAMPLES = """\
examples:
  effnet-train photos/ --variant lite0 --output my_model/
      photos/cat/*.jpg, photos/dog/*.jpg ... -> my_model/lite0_int8.tflite and a report
  effnet-train photos/ --output my_model/ --export all
      also the MediaPipe / TFLite Task Library file (uint8 in, probabilities out), ONNX, fp32
  effnet-train labels.csv --val val_photos/ --class-weights balanced --output my_model/
  effnet-train photos/ --output my_model/ --fine-tune         (slower; the last stage learns too)
  effnet-train photos/ --output my_model/ --resume            (after a crash or Ctrl-C)
  effnet-train more_photos/ --init my_model/model.safetensors --output my_model_v2/
      continue from an earlier model: more photos, or a new class
  effnet-infer photo.jpg --model my_model/lite0_int8.tflite

Lite0-2 start from ImageNet weights that come with the project; Lite3/4 need --weights with a
timm checkpoint. The report's threshold table helps choose effnet-infer --threshold.
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="effnet-train", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder of class sub-folders, or a CSV of path,label")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the model files and the report")
    p.add_argument("--variant", default="lite0", help=f"one of {', '.join(VARIANTS)} (lite0)")
    p.add_argument("--weights", type=Path, metavar="CKPT",
                   help="ImageNet checkpoint to start from (timm format; needed for lite3/lite4)")
    p.add_argument("--init", type=Path, metavar="CKPT",
                   help="continue from an earlier effnet-train model: classes it knows keep their "
                        "weights, new ones are added")
    p.add_argument("--val", type=Path, metavar="DATA", help="validation photos (same layout as DATA)")
    p.add_argument("--val-split", type=float, default=0.2, metavar="F",
                   help="without --val: this share of each class validates (0.2; stratified, seeded)")
    p.add_argument("--test", type=Path, metavar="DATA", help="test photos, reported apart (never used to choose)")
    p.add_argument("--views", type=int, default=8, help="augmented views of each training photo (8)")
    p.add_argument("--epochs", type=int, default=300, help="at most this many head epochs (300)")
    p.add_argument("--fine-tune", action="store_true",
                   help="then train the last block stage and the head convolution too (BatchNorm frozen)")
    p.add_argument("--label-smoothing", type=float, default=0.1, metavar="E",
                   help="share of each target spread over the other classes: less overconfidence (0.1)")
    p.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                   help="balanced: weigh each class by 1/its share of the photos (imbalanced data)")
    p.add_argument("--head-init", choices=("zeros", "imagenet"), default="zeros",
                   help="new classes start from zeros (default), or from the ImageNet classes their "
                        "photos resemble (imagenet; measured no better, see the README)")
    p.add_argument("--export", default="tflite", metavar="LIST",
                   help=f"comma-separated, of {', '.join(EXPORTS)}, or 'all' (tflite)")
    p.add_argument("--seed", type=int, default=0, help="everything random follows from it (0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (all cores)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output (after a crash or Ctrl-C)")
    p.add_argument("-q", "--quiet", action="store_true", help="no report on stdout (report.json is written)")
    p.add_argument("--version", action="version", version=f"effnet-train {__version__}")
    args = p.parse_args(argv)
    if args.views < 1 or args.views > 64:
        p.error("--views must be between 1 and 64")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    if not 0 < args.val_split < 1:
        p.error("--val-split must be between 0 and 1")
    if not 0 <= args.label_smoothing < 1:
        p.error("--label-smoothing must be in [0, 1)")
    wanted = list(EXPORTS) if args.export == "all" else [x.strip() for x in args.export.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in EXPORTS]
    if unknown or not wanted:
        p.error(f"--export: unknown {unknown[0]!r}" if unknown else "--export: nothing to export")
    args.export = ["tflite"] + [x for x in wanted if x != "tflite"]     # the deployed file first
    return args


def run_config(args) -> dict:
    """What decides the result: a rerun with --resume must ask for the same."""
    def where(p):
        return str(p.resolve()) if p else None
    return {"data": where(args.data), "variant": args.variant, "weights": where(args.weights),
            "init": where(args.init), "val": where(args.val), "val_split": None if args.val else args.val_split,
            "test": where(args.test), "views": args.views, "epochs": args.epochs, "fine_tune": args.fine_tune,
            "label_smoothing": args.label_smoothing, "class_weights": args.class_weights,
            "head_init": args.head_init, "seed": args.seed}


def log(message: str) -> None:
    print(f"effnet-train: {message}", file=sys.stderr, flush=True)


def load_data(args, log) -> tuple[data_mod.Photos, data_mod.Photos, data_mod.Photos | None]:
    photos = data_mod.load(args.data)
    for w in photos.warnings:
        log(f"warning: {w}")
    if args.val:
        val = _same_classes(data_mod.load(args.val), photos.classes, args.val)
        train = photos
    else:
        t, v = data_mod.stratified_split(photos, args.val_split, args.seed)
        train, val = photos.subset(t), photos.subset(v)
    test = _same_classes(data_mod.load(args.test), photos.classes, args.test) if args.test else None
    data_mod.check_disjoint(train, val)
    if test is not None:
        data_mod.check_disjoint(train, test, "test")
    for w in data_mod.check_validation(train, val):
        log(f"warning: {w}")
    return train, val, test


def _same_classes(other: data_mod.Photos, classes: list[str], where: Path) -> data_mod.Photos:
    unknown = [c for c in other.classes if c not in classes]
    if unknown:
        raise TrainError(f"{where}: class {unknown[0]!r} is not one of the training classes")
    index = {c: i for i, c in enumerate(classes)}
    return data_mod.Photos(other.paths, [index[other.classes[i]] for i in other.labels], classes, other.warnings)


def base_model(args):
    """(model, its ImageNet classifier or None, classes and head of --init or None)."""
    init = None
    if args.init:
        sd, labels, variant = load_checkpoint(args.init)
        if labels is None:
            raise TrainError(f"{args.init}: no class names (not an effnet-train checkpoint, and no labels.txt beside it)")
        if variant and variant != args.variant:
            raise TrainError(f"{args.init} is a {variant} model; give --variant {variant}")
        from ..weights import checkpoint_classes, create_model, load_state_dict
        model = load_state_dict(create_model(args.variant, None, checkpoint_classes(sd)), sd, str(args.init))
        init = (labels, model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone())
        imagenet = None
    else:
        model = load_model(args.variant, args.weights)
        imagenet = (model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()) \
            if model.classifier.out_features == 1000 else None
    return model, imagenet, init


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return train(args, log)
    except (TrainError, data_mod.DataError, WeightsError, ExportError, CalibrationError, ModelError) as e:
        print(f"effnet-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effnet-train: interrupted; {args.output} keeps the best model so far and what was "
              "computed: run again with --resume to continue", file=sys.stderr)
        return 130


def train(args, log) -> int:
    seconds, t0 = {}, time.perf_counter()
    config = run_config(args)
    try:
        get_variant(args.variant)
    except UnknownVariantError as e:
        raise TrainError(str(e)) from None
    train_set, val_set, test_set = load_data(args, log)      # all checked before anything is written
    prepare_output(args.output, config, args.resume)
    out, work = args.output, args.output / WORK
    work.mkdir(exist_ok=True)
    write_split(out, {"train": train_set, "val": val_set, "test": test_set})
    classes = train_set.classes
    (out / "labels.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    model, imagenet, init = base_model(args)
    variant = model.variant
    config_pp = PreprocessConfig.for_variant(variant, model.input_size)
    seconds["data"] = time.perf_counter() - t0

    # 1. the frozen layers, once per view
    t = time.perf_counter()
    # --fine-tune: the frozen part ends with the last stage but one; the last stage learns
    cut = len(model.stages) - 2 if args.fine_tune else "pooled"
    backbone = Backbone(model, cut, work, args.threads)
    log(f"{len(train_set.paths)} training photos x {args.views} views, {len(val_set.paths)} validation photos")
    feats = {}
    for name, photos, views in (("train", train_set, args.views), ("val", val_set, 0), ("test", test_set, 0)):
        if photos is None:
            continue
        x, owner, bad = cached_features(backbone, photos.paths, config_pp, views, args.seed, work, name,
                                        f"features of the {name} photos", log)
        if bad:
            log(f"warning: {len(bad)} {name} file(s) could not be read and are left out (e.g. {bad[0][0]})")
        feats[name] = (x, np.asarray(photos.labels, np.int64)[owner] if len(owner) else np.zeros(0, np.int64), owner)
    if len(feats["train"][0]) == 0 or len(feats["val"][0]) == 0:
        raise TrainError("no readable training or validation photos")
    seconds["features"] = time.perf_counter() - t

    # 2. the head (and with --fine-tune, the last stage)
    t = time.perf_counter()
    counts = np.bincount(feats["train"][1], minlength=len(classes)).tolist()
    settings = Settings(epochs=args.epochs, label_smoothing=args.label_smoothing, seed=args.seed,
                        class_weights=balanced_weights(counts) if args.class_weights == "balanced" else None)
    tail = Tail(model, cut + 1) if args.fine_tune else None
    pooled = {k: (pool(tail, v[0]) if tail else v[0], v[1], v[2]) for k, v in feats.items()}
    saved = load_state(work) if args.resume else None
    ckpt_path = out / CHECKPOINT
    best: dict = {}

    def keep(module, state, history):     # the best so far, in memory: an interruption saves it
        best.update(state=state, module=module, info={"val_top1": history.best_acc, "epoch": history.best_epoch})
    head = new_head(classes, pooled["train"][0], pooled["train"][1], imagenet, init, args.head_init)
    model.classifier = head
    if tail:
        tail.classifier = head
    try:
        if saved and saved[1].get("phase") == "done":
            sd, _, _ = load_checkpoint(ckpt_path)
            model.load_state_dict(sd)
            history = History(**saved[1]["history"])
            log("resumed: training had finished")
        else:
            history = None
            if not (saved and saved[1].get("phase") == "fine-tune"):
                history = fit_head(head, pooled["train"][0], pooled["train"][1], pooled["val"][0],
                                   pooled["val"][1], settings, work, args.resume, keep=keep)
            if tail:
                history = fine_tune(tail, feats["train"][0], feats["train"][1], feats["val"][0], feats["val"][1],
                                    settings, work, args.resume, history or History(), keep=keep)
            save_checkpoint(ckpt_path, model.state_dict(), classes, variant.name,
                            {"val_top1": history.best_acc, "epoch": history.best_epoch})
            save_state(work, {}, {"phase": "done", "history": history.__dict__})
    except KeyboardInterrupt:
        if best:
            best["module"].load_state_dict(best["state"])
            save_checkpoint(ckpt_path, model.state_dict(), classes, variant.name, best["info"])
            log(f"interrupted: the best model so far (validation top-1 {best['info']['val_top1']:.1%}) "
                f"is in {ckpt_path}")
        raise
    model.eval()
    seconds["training"] = time.perf_counter() - t
    log(f"best validation top-1 {history.best_acc:.1%} (epoch {history.best_epoch + 1} of "
        f"{len(history.epoch)}{', stopped early' if history.stopped_early else ''})")

    # 3. the files to deploy, calibrated on the training photos and verified by the exporter
    t = time.perf_counter()
    exporter = Exporter(variant.name, weights=ckpt_path, labels=classes, log=log)
    crops = centre_crops(every_class_in_turn(train_set, args.seed), exporter.config, CALIB_MAX)
    exporter.calibrate_on(crops, "training photos")
    files = {}
    for key in args.export:
        suffix, precision, fmt, io, softmax = EXPORTS[key]
        path = out / f"{variant.name}_{suffix}"
        exporter.export(path, precision, fmt, io, softmax=softmax)
        files[key] = path
    seconds["export"] = time.perf_counter() - t

    # 4. judged on the validation photos: the PyTorch model, then every file through the runtime
    t = time.perf_counter()
    evaluations = {"fp32-pytorch": evaluate_torch(model, val_set, config_pp, "fp32 PyTorch (checkpoint)")}
    for key, path in files.items():
        evaluations[key] = evaluate_file(path, val_set, f"{path.name} (effnet runtime)")
    if test_set is not None:
        evaluations["test:" + "tflite"] = evaluate_file(files["tflite"], test_set, f"TEST {files['tflite'].name}")
    seconds["evaluation"] = time.perf_counter() - t
    report = {"variant": variant.name, "classes": classes, "deployed": "tflite",
              "photos": {"train": len(set(feats["train"][2].tolist())), "val": evaluations["tflite"]["photos"],
                         "test": len(test_set.paths) if test_set else 0},
              "files": {k: str(p) for k, p in files.items()}, "checkpoint": str(ckpt_path),
              "evaluations": evaluations, "history": history.__dict__, "seconds": seconds,
              "config": config, "version": __version__}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_finite) + "\n", encoding="utf-8")
    try:
        pictures(report, history.__dict__, out)
    except ImportError:
        log("warning: no pictures (matplotlib is missing: pip install 'effnet-lite-edge[train]')")
    if not args.quiet:
        print(text(report))
    log(f"done in {time.perf_counter() - t0:.0f} s: {files['tflite']} and the report in {out}")
    return 0


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
