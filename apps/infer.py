"""effnet-infer: classify photos with an exported EfficientNet-Lite model.

Results go to stdout (a table per image, or JSON Lines with --json); diagnostics,
progress and per-file errors go to stderr. Exit status: 0 all classified, 1 some inputs
failed (the rest were still classified), 2 usage or model error.
"""
from __future__ import annotations

import time

_IMPORT_START = time.perf_counter()

import argparse  # noqa: E402  (the imports are timed for --timing)
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from effnet_lite import (BackendUnavailableError, Classifier, ClassifierOptions, ModelError,  # noqa: E402
                     __version__)
from effnet_lite.backends import BACKENDS  # noqa: E402
from effnet_lite.cores import workers_per_core  # noqa: E402
from effnet_lite.dataset import image_files  # noqa: E402
from effnet_lite.progress import Progress  # noqa: E402

from .parallel import parallel, sequential  # noqa: E402
from effnet_lite.quiet import Captured  # noqa: E402

_IMPORT_MS = (time.perf_counter() - _IMPORT_START) * 1e3

EXAMPLES = """\
examples:
  effnet-infer photo.jpg --model lite0_int8.tflite
  effnet-infer photos/ --model lite0_int8.tflite --top-k 3 --threshold 0.1
  effnet-infer 'holiday/*.jpg' --model lite2_int8.onnx --threads 4 --json > results.jsonl
  effnet-infer cat.png --model efficientnet-lite0-int8.tflite   (Google's own file works too)
  effnet-infer --video clip.mp4 --model lite0_int8.tflite --max-fps 2 --json
  effnet-infer --video /dev/video0 --model lite0_int8.tflite     (newest frame each time)

Directories are searched recursively for images. Quote glob patterns to let
effnet-infer expand them (useful with many files).
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="effnet-infer", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, directories or globs")
    p.add_argument("--video", metavar="SOURCE",
                   help="classify video frames instead: a file, /dev/videoN, rtsp://... or "
                        "'picamera' (Raspberry Pi camera via picamera2); needs the 'video' extra")
    p.add_argument("--every", type=int, default=1, metavar="N", help="video: classify every Nth frame (1)")
    p.add_argument("--max-fps", type=float, metavar="F",
                   help="video: classify at most F frames per second of video time")
    p.add_argument("-m", "--model", required=True, help=".tflite or .onnx model file")
    p.add_argument("-k", "--top-k", type=int, default=5, help="classes to show per image (5)")
    p.add_argument("-t", "--threshold", type=float, default=0.0,
                   help="hide classes scoring below this probability (0)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (backend default)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes, each with its own interpreter and --threads (default: "
                        f"1, or min(cores, 4) with 1 thread each for {AUTO_WORKERS_FROM}+ images "
                        "when --threads is not given); results stay in input order")
    p.add_argument("--backend", choices=list(BACKENDS), help="force a backend (default: by file type)")
    p.add_argument("--json", action="store_true", help="one JSON object per image (JSON Lines)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="one line per image (top class only); no banner, timings or progress")
    p.add_argument("--exact", action="store_true",
                   help="preprocess bit-identically to the reference (timm) transform: full-size "
                        "JPEG decode, whole-frame resize (slower; the default differs by a level "
                        "or two on up to a few pixels in 1,000)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="describe the model file too: its metadata, labels, and whether its "
                        "SHA-256 digest was verified")
    p.add_argument("--timing", action="store_true",
                   help="print where the time went (imports, model load, per image) to stderr")
    p.add_argument("--version", action="version", version=f"effnet-infer {__version__}")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.workers is not None and not 1 <= args.workers <= 64:
        p.error("--workers must be between 1 and 64")
    if bool(args.images) == bool(args.video):
        p.error("give IMAGE arguments or --video SOURCE (one of the two)")
    if args.every < 1 or (args.max_fps is not None and not args.max_fps > 0):
        p.error("--every must be at least 1 and --max-fps above 0")
    if not 0 <= args.threshold <= 1:
        p.error(f"--threshold is a probability between 0 and 1, not {args.threshold:g}")
    return args


AUTO_WORKERS_FROM = 256    # images; below, starting worker processes costs what they save


def choose_workers(workers: int | None, threads: int | None, images: int) -> int:
    """--workers, or the default: one process per core (at most 4) for many images."""
    if workers is not None:
        return min(workers, max(images, 1))
    return workers_per_core(threads) if images >= AUTO_WORKERS_FROM else 1


def expand(inputs: list[str]):
    """Yield (path, error) for every input: files as given, directories walked, globs expanded."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = image_files(path)
            if not found:
                yield path, "no images found in this directory"
            for p in found:
                yield p, None
        elif path.exists():
            yield path, None
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                yield path, "no file matches this pattern"
            for m in matches:
                yield Path(m), None
        else:
            yield path, "no such file or directory"


def describe_model(clf) -> str:
    """What the banner says of a model's metadata (ours, the standard TFLite one, or none)."""
    meta, standard = clf.metadata, clf.backend.standard
    if meta:
        what = f"{meta.variant} {meta.precision}"
        if meta.labels and len(meta.labels) != 1000:
            what += f", {len(meta.labels)} classes"
        return what + (", UNTRAINED random weights" if meta.untrained else "") + ", digest verified"
    if standard:
        labels = f"{len(standard.labels)} labels from the file" if standard.labels else "no labels file"
        return (f"{standard.name or 'unnamed model'}: standard TFLite metadata, {labels}; "
                "crop and interpolation from the input size")
    return "no metadata: defaults from input size"


def model_info(clf) -> list[str]:
    """--verbose: the model file as the runtime understood it."""
    meta, standard, io = clf.metadata, clf.backend.standard, clf.io
    lines = [f"integrity: digest {clf.backend.digest} verified" if clf.backend.digest else
             "integrity: not checked (the file carries no digest: it was not made by effnet-lite-edge)"]
    if meta:
        lines.append(f"metadata: effnet-lite-edge ({meta.exporter}); calibration: "
                     f"{meta.calibration or 'none'}")
    if standard:
        lines.append(f"standard TFLite metadata: {standard.name!r} version {standard.version!r} "
                     f"by {standard.author!r}, license {standard.license!r}")
    if not meta and not standard:
        lines.append("metadata: none (settings from the variant table by input size)")
    cfg = io.config
    lines.append(f"input: {io.layout} {io.input_dtype.name} {cfg.size}x{cfg.size}, crop {cfg.crop_pct}, "
                 f"{cfg.interpolation}, mean {tuple(round(m, 4) for m in cfg.mean)}, "
                 f"std {tuple(round(s, 4) for s in cfg.std)}")
    lines.append(f"output: {len(io.labels)} classes, "
                 f"{'probabilities' if io.output_is_probability else 'logits (softmax applied here)'}")
    safe = ("pair-safe int8 weights (the same answers on every CPU class)" if meta and meta.pair_safe
            else "int8 weights not known to be pair-safe" if clf.backend.quantized else "")
    lines.append(f"cpu: int8 class {clf.cpu_int8_class}" + (f"; file: {safe}" if safe else ""))
    return lines


def format_table(result) -> str:
    total = result.preprocess_ms + result.inference_ms
    lines = [f"{result.source}  ({total:.1f} ms: preprocess {result.preprocess_ms:.1f}, "
             f"inference {result.inference_ms:.1f})"]
    for rank, c in enumerate(result.categories, 1):
        lines.append(f"  {rank}. {c.score:6.1%}  {c.label}  [{c.index}]")
    if not result.categories:
        lines.append("  (no class above the threshold)")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except BrokenPipeError:     # the reader left (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def run(args) -> int:
    options = ClassifierOptions(max_results=args.top_k, score_threshold=args.threshold,
                                num_threads=args.threads, backend=args.backend,
                                exact=args.exact)
    load_start = time.perf_counter()
    quiet = Captured()        # the libraries' own stderr output stays off ours
    try:
        with quiet:
            clf = Classifier.from_file(args.model, options)
    except (ModelError, BackendUnavailableError) as e:
        print(f"effnet-infer: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"model: {args.model} ({describe_model(clf)}; {clf.backend.name}, "
              f"{clf.io.config.size}px {clf.io.config.interpolation})", file=sys.stderr)
    if args.verbose:
        for line in model_info(clf):
            print(f"  {line}", file=sys.stderr)
    if clf.int8_caveat:
        print(f"effnet-infer: warning: {clf.int8_caveat}", file=sys.stderr)
    load_ms = (time.perf_counter() - load_start) * 1e3
    if args.video:
        from .video import run as run_video
        with clf:
            return run_video(args, clf, quiet)
    items = list(expand(args.images))
    runnable = [path for path, problem in items if problem is None]
    workers = choose_workers(args.workers, args.threads, len(runnable))
    if workers > 1:
        digest = clf.backend.digest
        clf.close()       # each worker opens its own; this one only checked the file
        outcomes = parallel(args.model, replace(options, num_threads=args.threads or 1), runnable, workers,
                            digest=digest)
    else:
        outcomes = sequential(clf, quiet, runnable)
    failures, pre_ms, inf_ms, done = 0, 0.0, 0.0, 0
    bar = Progress(len(items), "classifying", enabled=None if len(items) > 3 and not args.quiet else False)
    try:
        for path, problem in items:
            notes = []
            if problem is None:
                kind, payload, notes = next(outcomes)
                if kind == "model":
                    bar.clear()
                    print(f"effnet-infer: error: {payload}", file=sys.stderr)
                    return 2
                if kind == "image":
                    problem = payload.removeprefix(f"{path}: ")
                else:
                    result = payload
                    pre_ms, inf_ms, done = pre_ms + result.preprocess_ms, inf_ms + result.inference_ms, done + 1
            bar.clear()
            if problem is not None:
                failures += 1
                print(f"effnet-infer: {path}: {problem}" + (f" [{notes[0]}]" if notes else ""), file=sys.stderr)
            else:
                if notes:       # decoded, with a library's complaint: say it once, in our words
                    print(f"effnet-infer: {path}: warning: {notes[0]}", file=sys.stderr)
                if args.json:
                    print(json.dumps(result.to_dict()))
                elif args.quiet:
                    top = result.categories[0] if result.categories else None
                    print(f"{path}\t{top.label}\t{top.score:.4f}" if top else f"{path}\t-\t-")
                else:
                    print(format_table(result))
            sys.stdout.flush()
            bar.update()
    except KeyboardInterrupt:
        bar.clear()
        print("effnet-infer: interrupted", file=sys.stderr)
        return 130
    finally:
        outcomes.close()       # stops the workers if we leave early
        clf.close()
    bar.close()
    quiet.close()
    if args.timing:
        per = f"preprocess {pre_ms / max(done, 1):.1f} ms, inference {inf_ms / max(done, 1):.1f} ms per image"
        print(f"timing: imports {_IMPORT_MS:.0f} ms, model load (incl. backend import) {load_ms:.0f} ms, "
              f"{done} image(s): {per}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
