"""effnet-check: does this board give the reference answers?

`write` runs model files on photos and saves what they output (raw output tensors, the
preprocessed crops as PNG, top-5) to a folder; `compare` runs the same files on the same
crops and photos here and reports, per file, how many raw outputs are bit-identical, the
largest difference (in output quantization steps, or relative for float outputs), and
whether the top-1 class is the same. Made for checking a Raspberry Pi (or any new machine)
against a reference written on x86; the ARM emulation check runs exactly this.

Exit status: 0 within the tolerance asked for (same top-1 everywhere, and --max-steps),
1 outside it, 2 usage or model error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from effnet_lite import (BackendUnavailableError, Classifier, ClassifierOptions, ImageError,
                     ModelError, __version__)
from effnet_lite.backends import BACKENDS, KIND_BY_SUFFIX
from effnet_lite.preprocess import preprocess

from effnet_lite.quiet import Captured

FORMAT = "effnet-lite-edge/reference-outputs"
VERSION = 1

EXAMPLES = """\
examples:
  on the reference machine (x86):
    effnet-check write ref/ --model lite0_int8.tflite --model lite0_s8s8.onnx photos/*.jpg
  the same, with the int8 ONNX file's own QDQ semantics (the same on every CPU) as reference:
    effnet-check write ref/ --backend onnxruntime-reference -m lite0_int8.tflite -m lite0_s8s8.onnx photos/*.jpg
  on the board, with the same model files and photos copied over:
    effnet-check compare ref/ --models-dir . --images-dir photos/
    effnet-check compare ref/ --strict          # raw outputs must be bit-identical
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _platform() -> dict:
    import importlib.metadata as md
    versions = {}
    for dist in ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {"machine": platform.machine(), "python": platform.python_version(),
            "system": platform.platform(), "effnet-lite-edge": __version__, "packages": versions}


def _open(path, backend):
    with Captured():      # LiteRT's delegate banner stays off our stderr
        return Classifier.from_file(path, ClassifierOptions(backend=backend, num_threads=1))


def _for_kind(backend: str | None, model: Path) -> str | None:
    """`--backend` applies to the models of its file type (e.g. onnxruntime-reference for the
    .onnx files of a mixed reference); the others take their default."""
    if backend in BACKENDS and KIND_BY_SUFFIX.get(model.suffix.lower()) != BACKENDS[backend][0]:
        return None
    return backend


def _raw(clf, crop: np.ndarray) -> np.ndarray:
    return np.asarray(clf.backend.run(clf.io.to_input(crop))).reshape(-1)


def write(out: Path, models: list[Path], images: list[Path], backend=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, "platform": _platform(),
           "images": [{"file": p.name, "sha256": _sha256(p.read_bytes())} for p in images],
           "models": []}
    for model in models:
        clf = _open(model, _for_kind(backend, model))
        size = clf.io.config.size
        crop_dir = out / "crops" / f"{model.stem}"
        crop_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for image in images:
            crop = preprocess(image, clf.io.config)
            Image.fromarray(crop).save(crop_dir / f"{image.stem}.png")
            raw = _raw(clf, crop)
            results.append({"crop_sha256": _sha256(crop.tobytes()), "raw": raw.tolist(),
                            "top5": np.argsort(-raw.astype(np.float64), kind="stable")[:5].tolist()})
        out_info = clf.backend.output
        doc["models"].append({"file": model.name, "digest": clf.backend.digest, "input_size": size,
                              "backend": clf.backend.name, "output_dtype": out_info.dtype.name,
                              "precision": clf.metadata.precision if clf.metadata else "",
                              "output_scale": out_info.scale, "results": results})
        clf.close()
    (out / "reference.json").write_text(json.dumps(doc))
    return doc


def _step(entry: dict) -> float | None:
    """The output quantization step: 1 for integer outputs, else None (float outputs, our
    int8 ONNX files' float logits included: differences are then relative)."""
    return 1.0 if entry["output_dtype"] in ("int8", "uint8") else None


def _difference(ref: np.ndarray, got: np.ndarray, step: float | None) -> float:
    """In output quantization steps when there are steps; else relative to max |ref|."""
    if step:
        return float(np.round(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max() / step, 3))
    return float(np.abs(ref - got).max() / max(float(np.abs(ref).max()), 1e-12))


def compare_model(entry: dict, ref_dir: Path, images: list[dict], models_dir: Path,
                  images_dir: Path | None, backend=None) -> dict:
    path = models_dir / entry["file"]
    clf = _open(path, backend)
    if entry["digest"] and clf.backend.digest != entry["digest"]:
        raise ModelError(f"{path}: not the file the reference was written with (digest differs)")
    step, n = _step(entry), len(entry["results"])
    row = {"file": entry["file"], "backend": clf.backend.name, "images": n, "raw_identical": 0,
           "max_difference": 0.0, "difference_unit": "steps" if step else "relative",
           "raw_top1_same": 0, "crops_identical": 0, "e2e_top1_same": 0, "e2e_images": 0, "errors": []}
    for image, ref in zip(images, entry["results"]):
        stem = Path(image["file"]).stem
        with Image.open(ref_dir / "crops" / Path(entry["file"]).stem / f"{stem}.png") as im:
            crop = np.asarray(im.convert("RGB"))
        raw, ref_raw = _raw(clf, crop), np.asarray(ref["raw"])
        row["raw_identical"] += bool(np.array_equal(raw, ref_raw.astype(raw.dtype)))
        row["max_difference"] = max(row["max_difference"], _difference(ref_raw, raw, step))
        row["raw_top1_same"] += int(np.argmax(raw)) == ref["top5"][0]
        photo = images_dir / image["file"] if images_dir else None
        if photo is None or not photo.is_file():
            continue
        try:
            here = preprocess(photo, clf.io.config)
        except ImageError as e:
            row["errors"].append(str(e))
            continue
        row["e2e_images"] += 1
        same_crop = _sha256(here.tobytes()) == ref["crop_sha256"]
        row["crops_identical"] += same_crop
        top = int(np.argmax(raw if same_crop else _raw(clf, here)))
        row["e2e_top1_same"] += top == ref["top5"][0]
    clf.close()
    return row


def passed(row: dict, max_steps: float | None) -> bool:
    ok = row["raw_top1_same"] == row["images"] and row["e2e_top1_same"] == row["e2e_images"]
    ok = ok and not row["errors"]
    return ok and (max_steps is None or row["max_difference"] <= max_steps)


def format_row(row: dict) -> str:
    unit = "steps" if row["difference_unit"] == "steps" else "x max|logit|"
    diff = f"{row['max_difference']:g} {unit}"
    e2e = (f"; photos end to end: top-1 same {row['e2e_top1_same']}/{row['e2e_images']}, crops "
           f"identical {row['crops_identical']}/{row['e2e_images']}" if row["e2e_images"] else "")
    return (f"{row['file']} ({row['backend']}): raw outputs bit-identical {row['raw_identical']}/"
            f"{row['images']}, max difference {diff}, top-1 same {row['raw_top1_same']}/{row['images']}{e2e}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="effnet-check", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="run models on photos here and save the reference")
    w.add_argument("out", type=Path, help="folder for reference.json and the crops")
    w.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    w.add_argument("-m", "--model", action="append", type=Path, required=True)
    c = sub.add_parser("compare", help="run the reference's models here and compare")
    c.add_argument("reference", type=Path, help="the folder `write` made")
    c.add_argument("--models-dir", type=Path, default=Path("."), help="where the model files are (.)")
    c.add_argument("--images-dir", type=Path, help="where the photos are (end-to-end check)")
    c.add_argument("--max-steps", type=float, default=None,
                   help="largest raw-output difference allowed (int outputs: quantization steps)")
    c.add_argument("--strict", action="store_true", help="raw outputs must be bit-identical")
    c.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    for q in (w, c):
        q.add_argument("--backend", choices=list(BACKENDS),
                       help="for the models of its file type (default: by file type)")
    p.add_argument("--version", action="version", version=f"effnet-check {__version__}")
    return p.parse_args(argv)


def load_reference(folder: Path) -> dict:
    try:
        doc = json.loads((folder / "reference.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}: no readable reference.json ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ModelError(f"{folder}/reference.json: not an effnet-check reference")
    return doc


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "write":
            doc = write(args.out, args.model, args.images, args.backend)
            print(f"wrote {args.out / 'reference.json'}: {len(doc['models'])} model(s) x "
                  f"{len(doc['images'])} image(s) on {doc['platform']['machine']}")
            return 0
        doc = load_reference(args.reference)
        max_steps = 0 if args.strict else args.max_steps
        rows = [compare_model(m, args.reference, doc["images"], args.models_dir, args.images_dir,
                              args.backend) for m in doc["models"]]
    except (ModelError, BackendUnavailableError, ImageError, OSError) as e:
        print(f"effnet-check: error: {e}", file=sys.stderr)
        return 2
    ref = doc["platform"]
    print(f"reference: {ref['machine']}, Python {ref['python']}; here: {platform.machine()}, "
          f"Python {platform.python_version()}")
    for row in rows:
        print(("PASS " if passed(row, max_steps) else "FAIL ") + format_row(row))
    if args.json:
        args.json.write_text(json.dumps({"platform": _platform(), "reference": ref, "rows": rows}))
    return 0 if all(passed(row, max_steps) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
