"""effnet-train: your own classifier from a folder of photos, exported for the Pi and MediaPipe.

DATA is a folder with one sub-folder per class (the class is the sub-folder's name) or a CSV
of path,label. Every photo is read once first: unreadable files, copies of one photo, and a
photo filed under two classes are named and left out. The backbone (ImageNet weights) stays
frozen: a new head (L2-regularised logistic regression) learns from cached features of the
centre crop and several augmented views of each photo; cross-validation chooses its penalty,
how the features are scaled, and the centre crop (87.5 % or all of the photo's shorter side,
written into the files), and the frozen head is that fit averaged with a plain linear probe's
(one layer). --fine-tune then trains the whole network from the fit alone, on a new augmented
view of each photo every epoch (BatchNorm statistics frozen): about 3x slower, and better
where the frozen features fall short (measured on 250 photos, its int8 file against the
default's: 1.6-4.8 points above on hand signs, CIFAR-10 photos, waste materials and glass
against plastic; -2.2 to +1.4 on product shots and scenes; 1.2-4.4 below on textures;
docs/train.md). --fine-tune-if-better deploys it
only where it answers more held-out photos right than the frozen head; --ensemble deploys both
networks in one file, their answers averaged.

The figure the report leads with is measured on photos that chose nothing: nested
cross-validation (the whole procedure, choice of settings included, repeated on five folds),
a held-out fifth above 2,000 photos, or your --test photos. The model you deploy is then
trained on all your photos. --output receives the checkpoint (model.safetensors, timm's
names), labels.txt, the int8 .tflite file (--export adds the MediaPipe file, ONNX and fp32),
report.json with pictures, and the list of photos used.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from effnet_lite import __version__
from effnet_lite.errors import ModelError
from effnet_lite.variants import VARIANTS

from ..calibration import CalibrationError
from ..export import ExportError
from ..rounding import ROUNDINGS
from ..weights import WeightsError
from . import data as data_mod
from .api import Trainer
from .options import EXPORTS, ROUNDING, TrainOptions
from .checkpoint import CHECKPOINT, load_state
from .report import text
from .run_folder import WORK, TrainError

EXAMPLES = """\
examples:
  effnet-train photos/ --variant lite0 --output my_model/
      photos/cat/*.jpg, photos/dog/*.jpg ... -> my_model/lite0_int8.tflite and a report
  effnet-train photos/ --output my_model/ --export all
      also the MediaPipe / TFLite Task Library file (uint8 in, probabilities out), ONNX, fp32
  effnet-train labels.csv --test test_photos/ --class-weights balanced --output my_model/
  effnet-train photos/ --output my_model/ --fine-tune         (slower; every layer learns too)
  effnet-train photos/ --output my_model/ --fine-tune-if-better   (kept only where it wins)
  effnet-train photos/ --output my_model/ --ensemble   (both networks in one file: 2x the work)
  effnet-train photos/ --output my_model/ --resume            (after a crash or Ctrl-C)
  effnet-train more_photos/ --init my_model/model.safetensors --output my_model_v2/
      continue from an earlier model: more photos, or a new class
  effnet-infer photo.jpg --model my_model/lite0_int8.tflite

Lite0-2 start from ImageNet weights that come with the project; Lite3/4 need --weights with a
timm checkpoint. The report's threshold table (from photos no model saw in training) helps
choose effnet-infer --threshold. Python: from effnet_lite.model_export.training import Trainer.
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
                   help="continue from an earlier effnet-train model (its network, and its classes' weights "
                        "as the head's starting point and prior); new classes are added")
    p.add_argument("--test", type=Path, metavar="DATA",
                   help="test photos (same layout as DATA): never used to choose; the report then leads with them")
    p.add_argument("--views", type=int, default=None,
                   help="augmented views of each photo, besides its centre crop (default: 8 up to 1,000 photos, "
                        "then fewer, down to 1 from 3,000: more photos need less augmentation)")
    p.add_argument("--fine-tune", action="store_true",
                   help="then train the whole network, a new augmented view of each photo every epoch "
                        "(BatchNorm statistics frozen; 10 epochs up to 500 photos, then fewer, at least 3; "
                        "weights averaged over the last half; about 2.5 min per 250 photos for Lite0 on 2 cores, "
                        "twice: the estimate's model and the final one)")
    p.add_argument("--fine-tune-if-better", action="store_true",
                   help="as --fine-tune, but deploy the fine-tuned network only if it answers more held-out "
                        "photos right than the frozen head (two fifths of the photos judge, each by models that "
                        "never saw it; else the frozen head is deployed, as without --fine-tune): a third "
                        "fine-tuning: about 1.3x --fine-tune's time where fine-tuning wins, 0.8x where the "
                        "head does (measured on 13 samples of 250 photos: the better mode on 12; docs/train.md)")
    p.add_argument("--ensemble", action="store_true",
                   help="as --fine-tune, then deploy the frozen head's network and the fine-tuned one together, "
                        "their logits averaged: one file holding both, twice the work and the size (Lite0's pair: "
                        "4.3 ms a photo where one Lite0 takes 2.2 and Lite2 4.5, int8, 1 thread, x86). On four sets "
                        "fetched after it was built, unlike ImageNet's photos (weather, MRI slices, facial "
                        "expressions in 5 and 2 classes; two samples of 250 photos each) its int8 file scored 2.0 to "
                        "7.0 points over a linear probe, the best mode tried on all 8; on hot dogs against other "
                        "dishes -1.2 and +1.8, on ten Caltech-101 objects -0.2 and +0.2 (the probe at 99.6 %%); "
                        "before, on 11 samples (fp32), above either network alone on 6, level on 3, below the better "
                        "on 2 (docs/train.md)")
    p.add_argument("--label-smoothing", type=float, default=0.0, metavar="E",
                   help="share of each target spread over the other classes (0)")
    p.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                   help="balanced: weigh each class by 1/its share of the photos (imbalanced data)")
    p.add_argument("--export", default="tflite", metavar="LIST",
                   help=f"comma-separated, of {', '.join(EXPORTS)}, or 'all' (tflite)")
    p.add_argument("--rounding", choices=ROUNDINGS, default=ROUNDING,
                   help="int8 weights of the exported files: learned (default: each layer's integers fitted "
                        "to its output on the calibration photos, closer to fp32, about 17 s more) or nearest")
    p.add_argument("--seed", type=int, default=0, help="everything random follows from it (0)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: all cores, the features one photo per core; N: one photo at a "
                        "time on N threads)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output (after a crash or Ctrl-C)")
    p.add_argument("-q", "--quiet", action="store_true", help="no report on stdout (report.json is written)")
    p.add_argument("--version", action="version", version=f"effnet-train {__version__}")
    args = p.parse_args(argv)
    if args.views is not None and not 1 <= args.views <= 64:
        p.error("--views must be between 1 and 64")
    if not 0 <= args.label_smoothing < 1:
        p.error("--label-smoothing must be in [0, 1)")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    wanted = list(EXPORTS) if args.export == "all" else [x.strip() for x in args.export.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in EXPORTS]
    if unknown or not wanted:
        p.error(f"--export: unknown {unknown[0]!r}" if unknown else "--export: nothing to export")
    args.export = ["tflite"] + [x for x in wanted if x != "tflite"]     # the deployed file first
    return args


def log(message: str) -> None:
    print(f"effnet-train: {message}", file=sys.stderr, flush=True)


def kept(out: Path) -> str:
    """What an interrupted run leaves in `out`, as it is on disk."""
    work = out / WORK
    features = sum(1 for _ in work.glob("features/*/*.npy")) if work.is_dir() else 0
    parts = [f"the features of {features} photo(s)"]
    for state in sorted(work.glob("fine-tune-*/state.safetensors")) if work.is_dir() else ():
        info = load_state(state.parent)
        if info:
            parts.append(f"{info[1]['epoch'] + 1} fine-tuning epoch(s) ({state.parent.name[10:]})")
    if (out / CHECKPOINT).is_file() and not (out / "report.json").is_file():
        parts.append(f"the trained model ({out / CHECKPOINT}; its files are not all exported)")
    elif not (out / "report.json").is_file():
        parts.append("no trained model yet")
    return f"{out} keeps " + ", ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = TrainOptions(variant=args.variant, weights=args.weights, init=args.init, views=args.views,
                           fine_tune=args.fine_tune, fine_tune_if_better=args.fine_tune_if_better,
                           ensemble=args.ensemble,
                           label_smoothing=args.label_smoothing,
                           class_weights=args.class_weights, seed=args.seed, threads=args.threads,
                           export=tuple(args.export), rounding=args.rounding)
    try:
        result = Trainer.from_folder(args.data, options, test=args.test, log=log).train(args.output, args.resume)
    except (TrainError, data_mod.DataError, WeightsError, ExportError, CalibrationError, ModelError) as e:
        print(f"effnet-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effnet-train: interrupted; {kept(args.output)}: run again with --resume to continue",
              file=sys.stderr)
        return 130
    if not args.quiet:
        print(text(result.report))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
