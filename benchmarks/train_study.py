"""effnet-train against a plain linear probe, on one seeded split, in one run.

    python -m effnet_lite.benchmarks.train_study DATA [--variant lite0] [--fine-tune] [--seeds 0,1,2,3] [--json OUT]

DATA as effnet-train takes it (class folders or a CSV of path,label). The split (stratified,
--seed) is made once; each candidate trains on the same training photos and is judged on the
same validation photos:
- linear probe: logistic regression (L2, L-BFGS) on the frozen pooled features of each
  training photo's centre crop, no augmentation, judged in fp32 (the baseline);
- effnet-train's default (frozen backbone, augmented views), judged in fp32 and as its int8
  .tflite file through the runtime; its wall time covers features, training, export and
  verification;
- the same with --head-init imagenet (new classes start from the ImageNet classes their
  photos resemble: does the 1000-class head's knowledge help?);
- with --fine-tune, effnet-train --fine-tune.
With several --seeds each seed is its own split and run; the table gives the mean accuracy,
each seed's, and the median wall time. Figures hold for this machine's CPU class (printed).
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

from ..model_export.training import data as data_mod
from ..model_export.training.cli import main as train_main
from ..model_export.training.features import Backbone, cached_features
from ..model_export.weights import load_model
from .machine import machine_info


def write_csv(path: Path, photos: data_mod.Photos) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(p), photos.classes[y]] for p, y in zip(photos.paths, photos.labels))


def linear_probe(variant: str, train, val, work: Path, seed: int) -> dict:
    t0 = time.perf_counter()
    model = load_model(variant)
    config = PreprocessConfig.for_variant(model.variant, model.input_size)
    backbone = Backbone(model, "pooled", work, None)
    x, owner, _ = cached_features(backbone, train.paths, config, 0, seed, work / "probe", "train", "probe: train", print)
    xv, owner_v, _ = cached_features(backbone, val.paths, config, 0, seed, work / "probe", "val", "probe: val", print)
    y, yv = np.asarray(train.labels)[owner], np.asarray(val.labels)[owner_v]
    torch.manual_seed(seed)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    head = torch.nn.Linear(x.shape[1], len(train.classes))
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(X), Y) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        acc = float((head(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean())
    return {"candidate": "linear probe (centre crops, no augmentation)", "fp32": acc, "int8": None,
            "seconds": time.perf_counter() - t0}


def effnet_train(name: str, train_csv: Path, val_csv: Path, out: Path, variant: str, extra: list) -> dict:
    t0 = time.perf_counter()
    code = train_main([str(train_csv), "--val", str(val_csv), "--variant", variant, "--output", str(out), "-q", *extra])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"train_study: effnet-train {' '.join(extra)} failed (exit {code})")
    report = json.loads((out / "report.json").read_text())
    ev = report["evaluations"]
    return {"candidate": name, "fp32": ev["fp32-pytorch"]["top1"], "int8": ev["tflite"]["top1"],
            "seconds": seconds, "phases": report["seconds"]}


def one_split(args, photos, seed: int) -> list[dict]:
    t, v = data_mod.stratified_split(photos, args.val_split, seed)
    train, val = photos.subset(t), photos.subset(v)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_csv(work / "train.csv", train)
        write_csv(work / "val.csv", val)
        rows.append(linear_probe(args.variant, train, val, work, seed))
        candidates = [("effnet-train (default)", []), ("effnet-train --head-init imagenet", ["--head-init", "imagenet"])]
        if args.fine_tune:
            candidates.append(("effnet-train --fine-tune", ["--fine-tune"]))
        for i, (name, extra) in enumerate(candidates):
            rows.append(effnet_train(name, work / "train.csv", work / "val.csv", work / f"run{i}", args.variant,
                                     ["--seed", str(seed), *extra]))
    for r in rows:
        r.update(seed=seed, train=len(train.paths), val=len(val.paths))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--variant", default="lite0")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seeds", default="0", help="comma-separated: one split and run per seed (0)")
    p.add_argument("--fine-tune", action="store_true", help="also run effnet-train --fine-tune")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    photos = data_mod.load(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for seed in seeds for r in one_split(args, photos, seed)]
    m = machine_info()
    print(f"\n{m['cpu']}, {m['cores']} cores, int8 class {m['cpu_int8_class']}")
    print(f"{args.data}: {len(photos.classes)} classes; {rows[0]['train']} training, {rows[0]['val']} validation "
          f"photos per split; seeds {seeds}")
    print(f"{'candidate':<46} {'fp32':>6} {'int8':>6} {'vs probe':>9} {'wall s':>7}  fp32 per seed")
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    probe = float(np.mean([r["fp32"] for r in rows if r["candidate"] == names[0]]))
    summary = []
    for name in names:
        mine = [r for r in rows if r["candidate"] == name]
        fp32 = float(np.mean([r["fp32"] for r in mine]))
        int8 = None if mine[0]["int8"] is None else float(np.mean([r["int8"] for r in mine]))
        wall = float(np.median([r["seconds"] for r in mine]))
        summary.append({"candidate": name, "fp32": fp32, "int8": int8, "seconds": wall})
        shown = "-" if int8 is None else f"{100 * int8:.1f}%"
        print(f"{name:<46} {100 * fp32:5.1f}% {shown:>6} {100 * (fp32 - probe):+8.1f}p {wall:7.1f}  "
              + " ".join(f"{100 * r['fp32']:.1f}" for r in mine))
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "classes": photos.classes, "seeds": seeds,
                                         "machine": m, "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
