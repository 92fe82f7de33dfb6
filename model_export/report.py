"""effnet-quant-report: how good is our int8? Measured on a labelled photo folder.

Calibrates on the first half of the photos (sorted by file name; 100 of the 200 dev
photos; --both-halves: also the other way round), evaluates on the other half, and puts side by side:
fp32, our int8 with each range estimator (TFLite and ONNX), nearest against learned weight
rounding with the time each calibration takes, data-free int8, onnxruntime's own
quantize_static (MinMax, per-channel, QDQ) on the same fp32 ONNX and the same photos, and
the effect of the integer pixel input (fp32 graph with the offset folded into the stem bias).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from effnet_lite import Classifier, ClassifierOptions
from effnet_lite.dataset import DatasetError, labelled_images
from effnet_lite.metrics import mean_kl, softmax
from effnet_lite.preprocess import normalize, preprocess
from effnet_lite.progress import track

from .calibration import ESTIMATORS, collect, pixels_to_input
from .cli_checks import check_output, variant_list, write_text
from .export import Exporter
from .graph import run, with_pixel_input
from .rounding import second_moments


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def _top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(scores.argmax(1) == labels))



def _file_scores(path, eval_paths) -> np.ndarray:
    """The runtime's Classifier on the photo files, with the reference preprocessing (so
    the comparison with fp32 measures quantization alone)."""
    clf = Classifier.from_file(path, ClassifierOptions(num_threads=2, exact=True))
    return np.stack([clf.scores(clf.preprocess(p)) for p in eval_paths])


def ort_quantize_static(exporter: Exporter, calib: np.ndarray, eval_pixels: np.ndarray, workdir: Path):
    """onnxruntime's own static quantization of our fp32 ONNX, for comparison."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    import onnxruntime as ort
    v = exporter.variant
    fp32 = workdir / "ort_fp32.onnx"
    fp32.write_bytes(exporter.serialize("fp32", "onnx"))

    def nchw(pixels):
        return np.ascontiguousarray(normalize(pixels, v.mean, v.std).transpose(2, 0, 1)[None])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            p = next(self.items, None)
            return None if p is None else {"input": nchw(p)}

    out = workdir / "ort_int8.onnx"
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": nchw(p)})[0] for p in eval_pixels]), out.stat().st_size


def _judge(exporter: Exporter, stem: Path, formats, eval_paths, ref, ref_probs, labels,
           fp32_top1: float) -> tuple[dict, dict, dict]:
    """Write the exporter's int8 files and measure them on the evaluation photos: per
    format, (figures, scores, path)."""
    figures, scores, paths = {}, {}, {}
    for fmt in formats:
        paths[fmt] = path = stem.with_suffix(f".{fmt}")
        exporter.export(path, "int8", fmt, verify=False)
        scores[fmt] = s = _file_scores(path, eval_paths)
        figures[fmt] = {"agreement": _agreement(s, ref), "top1": _top1(s, labels),
                        "top1_drop": fp32_top1 - _top1(s, labels), "kl": mean_kl(ref_probs, s),
                        "bytes": path.stat().st_size}
    return figures, scores, paths


ROUNDING_ROWS = (("nearest", "int8_{est}", "int8_onnx", "int8_data_free", "nearest_seconds"),
                 ("learned", "int8_learned", "int8_onnx_learned", "int8_data_free_learned", "learned_seconds"))


def pooled(first: list, second: list) -> list:
    """Per variant, the rounding figures of both directions pooled: over all the judged
    photos (weighted by each direction's count); times are the mean of the two."""
    out = []
    for a, b in zip(first, second):
        na, nb = a["evaluation_images"], b["evaluation_images"]

        def pool(x, y):
            return (x * na + y * nb) / (na + nb)
        row = {"variant": a["variant"], "estimator": a["estimator"], "evaluation_images": na + nb,
               "fp32_top1": pool(a["fp32_top1"], b["fp32_top1"])}
        for _, *keys, secs in ROUNDING_ROWS:
            for key in (k.format(est=a["estimator"]) for k in keys):
                if key in a:
                    row[key] = {f: pool(a[key][f], b[key][f]) for f in ("agreement", "top1", "top1_drop", "kl")}
                    if "seconds" in a[key]:
                        row[key]["seconds"] = (a[key]["seconds"] + b[key]["seconds"]) / 2
            if secs in a:
                row[secs] = (a[secs] + b[secs]) / 2
        out.append(row)
    return out


def report_variant(name: str, items, estimators=ESTIMATORS, with_ort=True, keep_dir=None,
                   learned: bool = False, swap: bool = False, data_free_learned: bool | None = None) -> dict:
    """All figures for one variant; with `keep_dir`, the int8 TFLite and ONNX files of the
    first estimator are kept there (as NAME_int8.tflite / NAME_int8.onnx). `learned` adds
    learned rounding (rounding.py) beside nearest, data-free too unless `data_free_learned`
    is False; `swap` calibrates on the second half of the photos and evaluates on the first."""
    half = len(items) // 2
    calib_items, eval_items = (items[half:], items[:half]) if swap else (items[:half], items[half:])
    exporter = Exporter(name, log=lambda m: None)
    cfg = exporter.config
    calib = np.stack([preprocess(p, cfg, exact=True) for p, _ in track(calib_items, desc=f"{name}: calibration photos")])
    eval_pixels = np.stack([preprocess(p, cfg, exact=True) for p, _ in track(eval_items, desc=f"{name}: evaluation photos")])
    eval_paths = [p for p, _ in eval_items]
    labels = np.array([label for _, label in eval_items])
    ref = exporter.reference_logits(eval_pixels)
    ref_probs = softmax(ref)
    row = {"variant": name, "estimator": estimators[0], "calibration_images": len(calib_items),
           "evaluation_images": len(eval_items),
           "calibrated_on": "second half" if swap else "first half", "fp32_top1": _top1(ref, labels)}
    pixel_graph = with_pixel_input(exporter.graph)
    with torch.no_grad():
        shifted = run(pixel_graph, pixels_to_input(eval_pixels, pixel_graph)).numpy()
    row["pixel_input"] = {"agreement": _agreement(shifted, ref),
                          "max_abs_logit_diff": float(np.abs(shifted - ref).max())}
    start = time.perf_counter()
    collector = collect(pixel_graph, calib)
    row["calibration_seconds"] = time.perf_counter() - start
    info = {"images": len(calib_items)}

    def judge(stem, formats):
        return _judge(exporter, stem, formats, eval_paths, ref, ref_probs, labels, row["fp32_top1"])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("tflite", "onnx"):
            path = tmp / f"fp32.{fmt}"
            exporter.export(path, "fp32", fmt, verify=False)
            row[f"fp32_{fmt}_bytes"] = path.stat().st_size
        for est in estimators:
            start = time.perf_counter()
            exporter.use_ranges(collector.ranges(est), {**info, "method": est}, collector.channel_means())
            quantize_seconds = time.perf_counter() - start
            first = est == estimators[0]
            figures, scores, paths = judge(tmp / est, ("tflite", "onnx") if first else ("tflite",))
            row[f"int8_{est}"] = figures["tflite"]
            if first:
                row["nearest_seconds"] = row["calibration_seconds"] + quantize_seconds
                row["int8_onnx"] = {**figures["onnx"],
                                    "same_top1_as_tflite": _agreement(scores["onnx"], scores["tflite"])}
                if keep_dir is not None:
                    for fmt in ("tflite", "onnx"):
                        shutil.copy(paths[fmt], Path(keep_dir) / f"{name}_int8.{fmt}")
        if learned:
            start = time.perf_counter()
            moments = second_moments(pixel_graph, calib)
            exporter.use_ranges(collector.ranges(estimators[0]), {**info, "method": estimators[0]},
                                collector.channel_means(), moments)
            row["learned_seconds"] = row["calibration_seconds"] + time.perf_counter() - start
            figures = judge(tmp / "learned", ("tflite", "onnx"))[0]
            row["int8_learned"], row["int8_onnx_learned"] = figures["tflite"], figures["onnx"]
        data_free_learned = learned if data_free_learned is None else data_free_learned
        for rounding in ("nearest", "learned") if data_free_learned else ("nearest",):
            start = time.perf_counter()
            exporter.calibrate(None, rounding=rounding)
            seconds = time.perf_counter() - start
            key = "int8_data_free" + ("_learned" if rounding == "learned" else "")
            row[key] = {**judge(tmp / f"datafree-{rounding}", ("tflite",))[0]["tflite"], "seconds": seconds}
        if with_ort:
            ort_scores, size = ort_quantize_static(exporter, calib, eval_pixels, tmp)
            row["ort_quantize_static"] = {"agreement": _agreement(ort_scores, ref),
                                          "top1": _top1(ort_scores, labels),
                                          "kl": mean_kl(ref_probs, softmax(ort_scores)), "bytes": size}
    return row


def _cell(d: dict) -> str:
    """agreement / top-1 drop in points / KL"""
    return f"{d['agreement']:.1%} / {100 * d['top1_drop']:+.1f} / {d['kl']:.5f}"


def print_rounding_table(rows, judged_on: str) -> None:
    """Nearest against learned rounding, each format, with the time each calibration took."""
    print("| variant | rounding | TFLite agree / top-1 drop pt / KL | ONNX U8S8 agree / drop / KL "
          "| data-free TFLite agree / drop / KL | calibration s (photos; data-free) |")
    print("|---" * 6 + "|")
    for r in rows:
        for rounding, *keys, secs in ROUNDING_ROWS:
            tfl, onnx, free = (k.format(est=r["estimator"]) for k in keys)
            if tfl in r:
                free_cell, free_secs = ((_cell(r[free]), f"{r[free]['seconds']:.1f}") if free in r
                                        else ("-", "-"))
                print(f"| {r['variant']} | {rounding} | {_cell(r[tfl])} | {_cell(r[onnx])} | "
                      f"{free_cell} | {r[secs]:.1f}; {free_secs} |")
    print(f"\n{judged_on}; drop = fp32 top-1 minus int8 top-1, in points (negative: int8 "
          "scored higher).")


def print_table(rows, estimators) -> None:
    cols = [("fp32 top-1", lambda r: f"{r['fp32_top1']:.1%}")]
    for est in estimators:
        cols.append((f"int8 {est} agree/top-1/KL",
                     lambda r, e=est: f"{r[f'int8_{e}']['agreement']:.1%} / {r[f'int8_{e}']['top1']:.1%}"
                                      f" / {r[f'int8_{e}']['kl']:.4f}"))
    cols += [("ONNX int8 agree", lambda r: f"{r['int8_onnx']['agreement']:.1%}"),
             ("ONNX=TFLite top-1", lambda r: f"{r['int8_onnx']['same_top1_as_tflite']:.1%}"),
             ("data-free agree/KL", lambda r: f"{r['int8_data_free']['agreement']:.1%} / "
                                              f"{r['int8_data_free']['kl']:.4f}"),
             ("ORT quantize_static agree/top-1/KL",
              lambda r: (f"{r['ort_quantize_static']['agreement']:.1%} / {r['ort_quantize_static']['top1']:.1%}"
                         f" / {r['ort_quantize_static']['kl']:.4f}") if "ort_quantize_static" in r else "-"),
             ("pixel-input agree", lambda r: f"{r['pixel_input']['agreement']:.1%}"),
             ("fp32/int8 MB", lambda r: f"{r['fp32_tflite_bytes'] / 1e6:.1f}/"
                                        f"{r[f'int8_{estimators[0]}']['bytes'] / 1e6:.1f}")]
    print("| variant | " + " | ".join(c for c, _ in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['variant']} | " + " | ".join(f(r) for _, f in cols) + " |")
    if rows:
        print(f"\nint8 calibrated on the {rows[0]['calibrated_on']} ({rows[0]['calibration_images']} "
              f"photos), evaluated on the other "
              f"{rows[0]['evaluation_images']}; 'agree' = same top-1 as fp32 PyTorch; "
              "KL = mean KL(fp32 || int8) of the class probabilities (lower is closer).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="effnet-quant-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="labelled photo folder (labels.csv, synset folders or wnid_ file names)")
    p.add_argument("--variants", default="lite0,lite1,lite2",
                   help="variants to report (lite0,lite1,lite2: those with bundled weights)")
    p.add_argument("--estimators", default=",".join(ESTIMATORS),
                   help="range estimators to compare; the first is also exported to ONNX")
    p.add_argument("--no-ort", action="store_true", help="skip onnxruntime's quantize_static")
    p.add_argument("--rounding", choices=("nearest", "both"), default="both",
                   help="both (default): learned rounding beside nearest, with the time each takes")
    p.add_argument("--both-halves", action="store_true",
                   help="also calibrate on the second half and judge on the first, and pool the "
                        "rounding figures of both directions (every photo judged once)")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    args = p.parse_args(argv)
    variants = variant_list(p, args.variants, "--variants", False,
                            "the report compares against the pretrained fp32 model")
    check_output(p, args.json, "--json")
    estimators = tuple(e for e in args.estimators.split(",") if e)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad or not estimators:
        p.error(f"--estimators: choose from {', '.join(ESTIMATORS)}")
    try:
        items = labelled_images(args.data)
    except DatasetError as e:
        print(f"effnet-quant-report: error: {e}", file=sys.stderr)
        return 2
    if len(items) < 2:
        print(f"effnet-quant-report: error: {args.data}: need at least 2 labelled photos", file=sys.stderr)
        return 2
    learned = args.rounding == "both"
    rows = [report_variant(v, items, estimators, not args.no_ort, learned=learned) for v in variants]
    print_table(rows, estimators)
    if learned:
        print()
        print_rounding_table(rows, f"calibrated on the first half ({rows[0]['calibration_images']} "
                                   f"photos), judged on the other {rows[0]['evaluation_images']}")
    document = rows
    if args.both_halves:
        second = [report_variant(v, items, estimators, not args.no_ort, learned=learned, swap=True)
                  for v in variants]
        print()
        print_table(second, estimators)
        document = {"first_half": rows, "second_half": second}
        if learned:
            document["pooled"] = both = pooled(rows, second)
            print()
            print_rounding_table(both, f"both directions pooled: each of the {both[0]['evaluation_images']} "
                                       "photos judged once, by the files calibrated on the other half")
    if args.json and not write_text(args.json, json.dumps(document, indent=2), "effnet-quant-report"):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
