"""int8 ONNX weights on this CPU class: TFLite's plain 8-bit weights against the pair-safe
ones the export writes (model_export/quantize.py), U8S8 and S8S8.

    python -m effnet_lite.benchmarks.onnx_weights_study --data ../shared/data/imagenet-sample-dev [--variants lite0,lite1]

Calibrates on the first half of the photos (sorted by name) and reports, per file:
agreement with fp32 PyTorch on the other half for onnxruntime's fused kernels and for the
file's QDQ semantics (graph optimizations off); on all photos, how often the two give the same
top-1 and their largest difference in logit steps; and the invoke median at one thread,
interleaved. Figures hold for the CPU class they were measured on, which it prints.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from effnet_lite import Classifier, ClassifierOptions, integrity
from effnet_lite.cpu import int8_class
from effnet_lite.dataset import image_files


def _invoke_ms(paths: list[Path], rounds: int = 15) -> list[float]:
    """Interleaved medians (10 calls per round and file) on a prepared input."""
    clfs = [Classifier.from_file(p, ClassifierOptions(num_threads=1)) for p in paths]
    xs = [c.io.to_input(np.full((c.io.config.size,) * 2 + (3,), 128, np.uint8)) for c in clfs]
    times = [[] for _ in clfs]
    for _ in range(rounds):
        for clf, x, t in zip(clfs, xs, times):
            for _ in range(3):
                clf.backend.run(x)
            start = time.perf_counter()
            for _ in range(10):
                clf.backend.run(x)
            t.append((time.perf_counter() - start) * 100)
    return [float(np.median(t)) for t in times]


def study(variant: str, folder: Path, out: Path) -> list[dict]:
    import torch

    from effnet_lite.model_export.calibration import load_calibration_images, pixels_to_input
    from effnet_lite.model_export.export import Exporter
    from effnet_lite.model_export.onnx_writer import write_int8
    photos = image_files(folder)
    half = len(photos) // 2
    calib, held = out / "calib", out / "held"
    for sub, chosen in ((calib, photos[:half]), (held, photos[half:])):
        sub.mkdir(parents=True, exist_ok=True)
        for p in chosen:
            (sub / p.name).unlink(missing_ok=True)
            (sub / p.name).symlink_to(p.resolve())
    exporter = Exporter(variant, log=lambda m: None)
    exporter.calibrate(calib, half)
    held_pixels = load_calibration_images(held, len(photos) - half, exporter.config)
    with torch.no_grad():
        fp32 = torch.cat([exporter.model(pixels_to_input(held_pixels[i:i + 25], exporter.graph))
                          for i in range(0, len(held_pixels), 25)]).numpy().argmax(1)
    crops = np.concatenate([exporter.samples, held_pixels])
    step = exporter.quantized.act["logits"].scale
    files = {}
    for io in ("uint8", "int8"):
        for pair_safe in (False, True):
            meta = exporter.metadata("int8", "onnx", io)
            meta.digest, meta.pair_safe = integrity.PLACEHOLDER, pair_safe
            path = out / f"{variant}_{'pair-safe' if pair_safe else '8-bit'}_{io}.onnx"
            path.write_bytes(integrity.seal(write_int8(exporter.quantized, meta.to_json(),
                                                       activations=io, pair_safe=pair_safe)))
            files[path] = (io, pair_safe)
    rows = []
    for path, (io, pair_safe) in files.items():
        fused, ref = exporter.outputs(path, crops), exporter.outputs(path, crops, "onnxruntime-reference")
        rows.append({"variant": variant, "activations": "U8S8" if io == "uint8" else "S8S8",
                     "weights": "pair-safe" if pair_safe else "8-bit", "path": path,
                     "agree_fused": float(np.mean(fused[half:].argmax(1) == fp32)),
                     "agree_reference": float(np.mean(ref[half:].argmax(1) == fp32)),
                     "fused_eq_reference": float(np.mean(fused.argmax(1) == ref.argmax(1))),
                     "max_steps": float(np.abs(fused - ref).max() / step)})
    for row, ms in zip(rows, _invoke_ms([r["path"] for r in rows])):
        row["invoke_ms"] = ms
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet_lite.benchmarks.onnx_weights_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a folder of photos")
    p.add_argument("--variants", default="lite0,lite1,lite2")
    args = p.parse_args(argv)
    if not args.data.is_dir() or len(image_files(args.data)) < 4:
        p.error(f"--data {args.data}: needs a folder with photos")
    print(f"CPU int8 class: {int8_class().name}")
    print(f"{'variant':<7} {'acts':<5} {'weights':<10} {'agree fused':>11} {'agree QDQ':>10} "
          f"{'fused=QDQ':>9} {'max steps':>9} {'invoke ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            for r in study(variant, args.data, Path(tmp) / variant):
                print(f"{r['variant']:<7} {r['activations']:<5} {r['weights']:<10} {r['agree_fused']:>11.1%} "
                      f"{r['agree_reference']:>10.1%} {r['fused_eq_reference']:>9.1%} "
                      f"{r['max_steps']:>9.1f} {r['invoke_ms']:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
