"""How much the runtime's fast preprocessing saves on big JPEGs, and what it changes.

Each photo of a labelled folder is upscaled to a 12-megapixel JPEG (a phone photo's size),
then classified with the default preprocessing (draft decoding: a DCT-domain downscale,
then resampling only the crop) and with `exact=True` (full decode, whole-frame resize):
time per image, top-1 agreement and the largest change in any class probability.

    python -m benchmarks.draft_study --model lite0_int8.tflite --data DIR [--limit 50]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from runtime import Classifier, ClassifierOptions
from runtime.dataset import labelled_images
from runtime.progress import track

from .photos import make_jpegs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.draft_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--size", default="4000x3000", help="JPEG size to test (4000x3000)")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    fast = Classifier.from_file(args.model, ClassifierOptions())
    exact = Classifier.from_file(args.model, ClassifierOptions(exact=True))
    times = {"fast": [], "exact": []}
    same, delta = [], []
    for path, _ in track(labelled_images(args.data)[:args.limit], desc="draft study"):
        jpeg = make_jpegs(Image.open(path).convert("RGB"), {"big": (w, h)})["big"]
        out = {}
        for name, clf in (("fast", fast), ("exact", exact)):
            start = time.perf_counter()
            out[name] = clf.scores(clf.preprocess(jpeg))
            times[name].append(time.perf_counter() - start)
        same.append(out["fast"].argmax() == out["exact"].argmax())
        delta.append(np.abs(out["fast"] - out["exact"]).max())
    d, f = np.median(times["fast"]) * 1e3, np.median(times["exact"]) * 1e3
    print(f"{len(same)} photos as {w}x{h} JPEGs, {args.model.name}:")
    print(f"  median time per image: fast {d:.1f} ms, exact {f:.1f} ms ({f / d:.1f}x faster)")
    print(f"  same top-1: {np.mean(same):.1%}; largest probability change: "
          f"median {np.median(delta):.4f}, max {np.max(delta):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
