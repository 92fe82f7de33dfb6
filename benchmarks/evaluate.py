"""effnet-eval: accuracy of model files (and optionally PyTorch fp32) on a labelled folder.

Reports top-1, top-5 and agreement with a reference model: the share of images with the
same top-1 class, and the mean KL divergence KL(reference || model) of the class
probabilities. Folders: labels.csv (file, class_index), synset sub-folders
(n01440764/...), or wnid-prefixed file names (n01440764_xxx.JPEG).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from effnet_lite import BackendUnavailableError, Classifier, ClassifierOptions, ImageError, ModelError, __version__
from effnet_lite.dataset import DatasetError, labelled_images
from effnet_lite.errors import needs_extra
from effnet_lite.metrics import mean_kl
from effnet_lite.model_export.cli_checks import check_model_files, check_output, positive_int, variant_list, write_text
from effnet_lite.progress import track

from effnet_lite.apps.parallel import parallel, scores_one
from effnet_lite.quiet import Captured


def file_scores(path, threads, exact=False, workers=1, engine="local", ray_address=None):
    """A function of the images that yields each one's probabilities (or its ImageError),
    in one process, in `workers` processes (apps.parallel), or on Ray (`workers` actors)."""
    options = ClassifierOptions(num_threads=threads or (1 if workers > 1 else None), exact=exact)
    with Captured():                                 # (LiteRT's banner)
        clf = Classifier.from_file(path, options)   # a bad file is an error before any work

    def run(paths):
        if engine == "ray":
            from effnet_lite.apps.label_ray import probabilities_ray
            clf.close()
            yield from probabilities_ray(str(path), options, list(paths), workers, ray_address)
            return
        if workers > 1:
            digest = clf.backend.digest
            clf.close()
            outcomes = parallel(str(path), options, list(paths), workers, want_scores=True, digest=digest)
        else:
            outcomes = (scores_one(clf, quiet, p) for p in paths)
        for kind, payload, _ in outcomes:
            if kind == "model":
                raise ModelError(payload)
            yield ImageError(payload) if kind == "image" else payload
    quiet = Captured()
    return run


def torch_scores(variant, threads):
    scorer = torch_scorer(variant, threads)

    def run(paths):
        for path in paths:
            try:
                yield scorer(path)
            except ImageError as e:
                yield e
    return run


def torch_scorer(variant, threads):
    import torch
    from .torch_reference import TorchReference
    torch.set_num_threads(threads or torch.get_num_threads())
    ref = TorchReference(variant)
    return lambda image: ref.probabilities(ref.input(image))[0].numpy()


def evaluate(name, scores, items) -> tuple[dict, np.ndarray, list]:
    """(figures, probabilities (N, classes), indices of images that failed to load);
    `scores(paths)` yields each image's probabilities or its ImageError, in order."""
    probs, failed = [], []
    outcomes = scores([path for path, _ in items])
    for i, outcome in enumerate(track(outcomes, total=len(items), desc=f"evaluating {name}")):
        if isinstance(outcome, ImageError):
            print(f"effnet-eval: {outcome}", file=sys.stderr)
            failed.append(i)
            probs.append(None)
        else:
            probs.append(outcome)
    ok = [i for i, p in enumerate(probs) if p is not None]
    p = np.stack([probs[i] for i in ok]) if ok else np.zeros((0, 1000))
    labels = np.array([items[i][1] for i in ok])
    top5 = np.argsort(-p, axis=1)[:, :5]
    figures = {"model": name, "images": len(ok), "failed": len(failed),
               "top1": float(np.mean(top5[:, 0] == labels)) if ok else 0.0,
               "top5": float(np.mean((top5 == labels[:, None]).any(1))) if ok else 0.0}
    full = np.full((len(items), p.shape[1]), np.nan)
    full[ok] = p
    return figures, full, failed


def agreement(ref: np.ndarray, other: np.ndarray) -> dict:
    both = ~(np.isnan(ref).any(1) | np.isnan(other).any(1))
    r, o = ref[both], other[both]
    return {"top1_agreement": float(np.mean(r.argmax(1) == o.argmax(1))), "mean_kl": mean_kl(r, o)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="effnet-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  effnet-eval lite0_int8.tflite lite0_int8.onnx "
                                       "--torch lite0 --data ../shared/data/imagenet-sample-dev")
    p.add_argument("models", nargs="*", type=Path, help=".tflite / .onnx files")
    p.add_argument("--data", type=Path, required=True, help="labelled image folder")
    p.add_argument("--torch", default="", metavar="VARIANTS", help="also evaluate PyTorch fp32")
    p.add_argument("--reference", help="model (file name or torch:VARIANT) to compare against "
                                       "(default: the first torch model, else the first file)")
    p.add_argument("--limit", type=positive_int, help="only the first N images (sorted by path)")
    p.add_argument("--threads", type=positive_int, help="inference threads (backend default; 1 per worker)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes (local) or Classifier actors (ray) per model file (1)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: evaluate on Ray Data, e.g. a whole validation set on a cluster")
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--exact", action="store_true",
                   help="model files use the bit-identical reference preprocessing (the PyTorch "
                        "model always does); default: the runtime's fast path, as users run it")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--version", action="version", version=f"effnet-eval {__version__}")
    args = p.parse_args(argv)
    if args.engine == "ray" and importlib.util.find_spec("ray") is None:
        p.exit(2, needs_extra(p.prog, "--engine ray", "cluster") + "\n")
    if not args.models and not args.torch:
        p.error("give model files and/or --torch VARIANTS")
    check_model_files(p, args.models)
    variants = variant_list(p, args.torch, "--torch", False, "evaluate a file exported from a checkpoint "
                              "instead (effnet-export {name} --weights CHECKPOINT)")
    check_output(p, args.json, "--json")
    names = [f"torch:{v}" for v in variants] + [m.name for m in args.models]
    if args.reference and args.reference not in names:
        p.error(f"--reference {args.reference}: not among the evaluated models ({', '.join(names)})")
    try:
        items = labelled_images(args.data)[:args.limit]
        scorers = [(f"torch:{v}", torch_scores(v, args.threads)) for v in variants]
        scorers += [(m.name, file_scores(m, args.threads, args.exact, args.workers, args.engine,
                                         args.ray_address)) for m in args.models]
    except (DatasetError, ModelError, BackendUnavailableError) as e:
        print(f"effnet-eval: error: {e}", file=sys.stderr)
        return 2
    results, probs = [], {}
    try:
        for name, scorer in scorers:
            figures, probs[name], _ = evaluate(name, scorer, items)
            results.append(figures)
    except (ModelError, RuntimeError) as e:      # RuntimeError: effnet_lite.apps.label.LabelError (Ray)
        print(f"effnet-eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effnet-eval: interrupted", file=sys.stderr)
        return 130
    ref = args.reference or scorers[0][0]
    for r in results:
        r.update({"reference": ref, **agreement(probs[ref], probs[r["model"]])})
    print(f"{len(items)} images from {args.data}; reference for agreement: {ref}")
    print(f"{'model':<32} {'top-1':>7} {'top-5':>7} {'agree':>7} {'KL':>8} {'failed':>7}")
    for r in results:
        print(f"{r['model']:<32} {r['top1']:>7.1%} {r['top5']:>7.1%} {r['top1_agreement']:>7.1%} "
              f"{r['mean_kl']:>8.4f} {r['failed']:>7}")
    if args.json and not write_text(args.json, json.dumps(
            {"data": str(args.data), "images": len(items), "results": results}, indent=2), "effnet-eval"):
        return 2
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
