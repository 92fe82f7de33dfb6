"""How much the runtime's fast preprocessing saves on big JPEGs, and what it changes.

Each photo of a labelled folder is upscaled to a 12-megapixel JPEG (a phone photo's size),
then classified with the default preprocessing (draft decoding: a DCT-domain downscale,
then resampling only the crop) and with `exact=True` (full decode, whole-frame resize):
time per image, top-1 agreement and the largest change in any class probability.

    python -m effnet_lite.benchmarks.draft_study --model lite0_int8.tflite --data DIR [--limit 50]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from effnet_lite import BackendUnavailableError, Classifier, ClassifierOptions, ImageError, ModelError
from effnet_lite.dataset import DatasetError, labelled_images
from effnet_lite.model_export.cli_checks import check_model_files, positive_int
from effnet_lite.preprocess import load_image
from effnet_lite.progress import track

from .photos import make_jpegs


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 4000x3000), not {text!r}")
    return w, h


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet_lite.benchmarks.draft_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help=".tflite / .onnx file")
    p.add_argument("--data", type=Path, required=True, help="labelled image folder")
    p.add_argument("--limit", type=positive_int, default=50, help="photos to use (50)")
    p.add_argument("--size", type=_size, default=(4000, 3000), help="JPEG size to test (4000x3000)")
    p.add_argument("--json", type=Path, help="write the figures (and the machine) here")
    args = p.parse_args(argv)
    check_model_files(p, [args.model])
    (w, h) = args.size
    try:
        fast = Classifier.from_file(args.model, ClassifierOptions())
        exact = Classifier.from_file(args.model, ClassifierOptions(exact=True))
        items = labelled_images(args.data)[:args.limit]
    except (DatasetError, ModelError, BackendUnavailableError) as e:
        print(f"draft_study: error: {e}", file=sys.stderr)
        return 2
    times = {"fast": [], "exact": []}
    same, delta, failed = [], [], 0
    for path, _ in track(items, desc="draft study"):
        try:
            photo = load_image(path)
        except ImageError as e:
            print(f"draft_study: skipped {e}", file=sys.stderr)
            failed += 1
            continue
        jpeg = make_jpegs(photo, {"big": (w, h)})["big"]
        out = {}
        for name, clf in (("fast", fast), ("exact", exact)):
            start = time.perf_counter()
            out[name] = clf.scores(clf.preprocess(jpeg))
            times[name].append(time.perf_counter() - start)
        same.append(out["fast"].argmax() == out["exact"].argmax())
        delta.append(np.abs(out["fast"] - out["exact"]).max())
    if not same:
        print(f"draft_study: error: none of the {len(items)} photos could be read", file=sys.stderr)
        return 2
    d, f = np.median(times["fast"]) * 1e3, np.median(times["exact"]) * 1e3
    print(f"{len(same)} photos as {w}x{h} JPEGs, {args.model.name}:")
    print(f"  median time per image: fast {d:.1f} ms, exact {f:.1f} ms ({f / d:.1f}x faster)")
    print(f"  same top-1: {np.mean(same):.1%}; largest probability change: "
          f"median {np.median(delta):.4f}, max {np.max(delta):.4f}")
    if args.json:
        from .machine import machine_info
        args.json.write_text(json.dumps({"model": args.model.name, "size": [w, h], "rows": [{
            "photos": len(same), "fast_ms": float(d), "exact_ms": float(f), "speedup": float(f / d),
            "same_top1": int(np.sum(same)), "max_change_median": float(np.median(delta)),
            "max_change_max": float(np.max(delta))}], "machine": machine_info()}, indent=1) + "\n")
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
