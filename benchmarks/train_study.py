"""effnet-train against a plain linear probe, judged on photos that neither saw, in one run.

    python -m effnet_lite.benchmarks.train_study DATA [DATA ...] [--train 250] [--test 500]
        [--seeds 0] [--fine-tune] [--if-better] [--ensemble] [--variant lite0] [--json OUT]

Each DATA is a folder of class sub-folders. Per seed, a stratified sample of --train photos
is what the user gives; --test other photos (stratified, disjoint, never shown to anything
that chooses) judge every candidate:
- linear probe: logistic regression as scikit-learn's defaults fit it (C=1, L2, L-BFGS) on the
  frozen pooled features of each training photo's centre crop, no augmentation, fp32;
- effnet-train (default), with --fine-tune also `--fine-tune`, with --if-better also
  `--fine-tune-if-better` (and which mode it kept), with --ensemble also `--ensemble`: its int8 .tflite file through
  the runtime, its fp32 model, how often the two answer alike (same_answers), and the figure its
  report leads with (its own estimate, from the training photos alone), with wall time and peak
  RSS of the whole command.
Each effnet-train row counts, against the probe, the new photos only its int8 file answers
right and those only the probe does (vs_probe): what a paired interval needs (train_summary).
With more than one sample (sets x seeds), each mode's figures pooled over them follow
(train_summary.py, which also pools the --json files of several runs).
The figures hold for this machine's CPU class (printed).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from effnet_lite.preprocess import PreprocessConfig
from effnet_lite.variants import get_variant

from ..model_export.training import data as data_mod
from ..model_export.training.features import Backbone, FeatureStore
from ..model_export.training.duplicates import fingerprints
from ..model_export.training.head import Linear
from ..model_export.weights import load_model
from . import train_summary
from .machine import machine_info
from .peak_memory import run_with_peak_rss


def sample(photos: data_mod.Photos, train: int, test: int, seed: int) -> tuple[data_mod.Photos, data_mod.Photos]:
    """Disjoint samples of about `train` and `test` photos, each class in proportion, seeded."""
    rng = np.random.default_rng(seed)
    labels, n = np.asarray(photos.labels), len(photos.paths)
    tr, te = [], []
    for c in range(len(photos.classes)):
        members = rng.permutation(np.flatnonzero(labels == c))
        a = max(2, round(train * len(members) / n))
        tr += members[:a].tolist()
        te += members[a:a + round(test * len(members) / n)].tolist()
    return photos.subset(sorted(tr)), photos.subset(sorted(te))


def distinct(data: Path, variant: str) -> data_mod.Photos:
    """The set's photos, each distinct photo once with its digest (copies and label conflicts out,
    as effnet-train would): so that no copy is on both sides of the sample."""
    photos = data_mod.load(data)
    prints, bad = fingerprints(photos.paths, PreprocessConfig.for_variant(get_variant(variant)), None,
                               "reading the set", [])
    return data_mod.clean(photos, prints, bad, lambda m: print(f"{data}: {m}"))


def write_csv(path: Path, photos: data_mod.Photos) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(p.resolve()), photos.classes[y]] for p, y in zip(photos.paths, photos.labels))


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, max_iter: int = 500, tolerance_grad: float = 1e-7,
              dtype=torch.float32) -> Linear:
    """Logistic regression as scikit-learn's defaults fit it, by autograd: a reference written
    apart from the trainer's head (which averages such a probe in: selection.probe)."""
    X, Y = torch.from_numpy(x).to(dtype), torch.from_numpy(y)
    w = torch.zeros(classes, x.shape[1], dtype=dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_grad=tolerance_grad, line_search_fn="strong_wolfe")

    def closure():      # scikit-learn's objective with C=1, divided by the number of photos
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ w.T + b, Y) + 0.5 * w.pow(2).sum() / len(x)
        loss.backward()
        return loss
    opt.step(closure)
    return Linear(w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32))


def linear_probe(variant: str, train, test, work: Path) -> dict:
    t0 = time.perf_counter()
    model = load_model(variant)
    config = PreprocessConfig.for_variant(model.variant, model.input_size)
    store = FeatureStore(Backbone(model, work, None), config, 0, 0, work / "probe")

    def features(photos):       # (read once already by distinct(): every photo has its digest)
        store.compute(list(zip(photos.paths, photos.digests)), "probe: features", print)
        return store.stack(photos.digests)[:, 0], np.asarray(photos.labels)
    x, y = features(train)
    xt, yt = features(test)
    head = fit_probe(x, y, len(train.classes))
    right = head.logits(xt).argmax(1) == yt
    return {"candidate": f"{train_summary.PROBE} (centre crops, scikit-learn's defaults)",
            "fp32": float(right.mean()), "int8": None, "same_answers": None,
            "wrong": [str(test.paths[i]) for i in np.flatnonzero(~right)], "vs_probe": None,
            "reported": None, "mode": None,
            "seconds": time.perf_counter() - t0, "peak_rss_mb": None}


def run_effnet_train(args: list, out: Path, who: str) -> tuple[dict, float, float]:
    """`effnet-train ARGS --output OUT -q` as a user runs it: (its report, wall seconds, peak RSS
    in MB of its own process, as the kernel counts it: peak_memory.py)."""
    code, err, seconds, rss = run_with_peak_rss([sys.executable, "-m", "effnet_lite.model_export.training.cli",
                                                 *args, "--output", out, "-q"])
    if code != 0:
        raise SystemExit(f"{who}: effnet-train {' '.join(map(str, args))} failed:\n{err[-2000:]}")
    return json.loads((out / "report.json").read_text()), seconds, rss


def effnet_train(name: str, train_csv: Path, test_csv: Path, out: Path, variant: str, extra: list) -> dict:
    report, seconds, rss = run_effnet_train([train_csv, "--test", test_csv, "--variant", variant, *extra], out,
                                            "train_study")
    fp32, int8 = report["test"]["fp32-pytorch"], report["test"]["tflite"]
    return {"candidate": name, "fp32": fp32["top1"], "int8": int8["top1"], "same_answers": same_answers(fp32, int8),
            "wrong": [m["photo"] for m in int8["misclassified"]],
            "reported": report["estimate"]["top1"], "reported_interval": report["estimate"]["interval"],
            "seconds": seconds, "peak_rss_mb": rss, "phases": report["seconds"],
            "l2_strength": report["chosen"]["l2_strength"], "crop_pct": report["chosen"].get("crop_pct"),
            "scaling": report["chosen"].get("scaling"), "mode": report["mode"]}


def same_answers(a: dict, b: dict) -> float:
    """The share of photos two evaluations of the same photos answer alike: both right, or both
    wrong with the same class (from their lists of mistakes)."""
    said = [{m["photo"]: m["predicted"] for m in e["misclassified"]} for e in (a, b)]
    differ = sum(said[0].get(p, "(right)") != said[1].get(p, "(right)") for p in said[0].keys() | said[1].keys())
    return 1 - differ / a["photos"]


def versus(probe_wrong: list[str], ours_wrong: list[str]) -> dict:
    """Against the probe, photo by photo: the photos only we answer right, and only it does (paths
    compared resolved: the probe's are the sample's, ours as the report names them)."""
    probe, ours = {str(Path(p).resolve()) for p in probe_wrong}, {str(Path(p).resolve()) for p in ours_wrong}
    return {"only_ours_right": len(probe - ours), "only_probe_right": len(ours - probe)}


def one_set(data: Path, args, seed: int) -> list[dict]:
    photos = distinct(data, args.variant)
    train, test = sample(photos, args.train, args.test, seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_csv(work / "train.csv", train)
        write_csv(work / "test.csv", test)
        rows.append(linear_probe(args.variant, train, test, work))
        candidates = [("effnet-train (default)", [])] + \
            [(f"effnet-train {flag}", [flag]) for flag, wanted in (("--fine-tune", args.fine_tune),
                                                                   ("--fine-tune-if-better", args.if_better),
                                                                   ("--ensemble", args.ensemble)) if wanted]
        for i, (name, extra) in enumerate(candidates):
            rows.append(effnet_train(name, work / "train.csv", work / "test.csv", work / f"run{i}", args.variant,
                                     ["--seed", str(seed), *extra]))
    for r in rows[1:]:
        r["vs_probe"] = versus(rows[0]["wrong"], r["wrong"])
    for r in rows:
        del r["wrong"]          # (the counts are what the results keep)
        r.update(set=set_name(data),
                 variant=args.variant, seed=seed, train=len(train.paths), test=len(test.paths),
                 classes=len(photos.classes))
    return rows


def set_name(data: Path) -> str:
    """The name a set is reported under: its folder's, or its parent's for a split folder
    (cifar10/test, clothing/train)."""
    data = data.resolve()
    return data.parent.name if data.name.lower() in ("train", "test", "val", "validation", "dataset", "data") \
        else data.name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--variant", default="lite0")
    p.add_argument("--train", type=int, default=250, help="training photos per set (250)")
    p.add_argument("--test", type=int, default=500, help="held-out photos per set (500)")
    p.add_argument("--seeds", default="0", help="comma-separated: one sample and run per seed (0)")
    p.add_argument("--fine-tune", action="store_true", help="also run effnet-train --fine-tune")
    p.add_argument("--if-better", action="store_true", help="also run effnet-train --fine-tune-if-better")
    p.add_argument("--ensemble", action="store_true", help="also run effnet-train --ensemble")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for d in args.data for seed in seeds for r in one_set(d, args, seed)]
    m = machine_info()
    print(f"\n{m['cpu']}, {m['cores']} cores, int8 class {m['cpu_int8_class']}; {args.variant}; seeds {seeds}")
    print(f"{'set':<10} {'train':>5} {'test':>5} {'candidate':<52} {'test fp32':>9} {'test int8':>9} "
          f"{'same':>6} {'reported':>8} {'vs probe':>8} {'wall s':>7} {'peak MB':>8}")
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"
    for r in rows:
        probe = next(q for q in rows if q["set"] == r["set"] and q["seed"] == r["seed"])["fp32"]
        ours = r["int8"] if r["int8"] is not None else r["fp32"]
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{r['set']:<10} {r['train']:>5} {r['test']:>5} {r['candidate']:<52} {pct(r['fp32']):>9} "
              f"{pct(r['int8']):>9} {pct(r['same_answers']):>6} {pct(r['reported']):>8} {100 * (ours - probe):>+7.1f}p {r['seconds']:>7.1f} {rss:>8}")
    if len(args.data) * len(seeds) > 1:
        print("\nPooled over the samples of this run (train_summary):")
        train_summary.show(train_summary.pooled(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": m, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
