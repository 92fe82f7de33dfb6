"""effnet-train against a plain linear probe, on one seeded split, in one run.

    python -m effnet_lite.benchmarks.train_study DATA [--variant lite0] [--fine-tune] [--json OUT]

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
Figures hold for this machine's CPU class (printed).
"""
from __future__ import annotations

import argparse
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
    lines = ["path,label"] + [f'"{p}",{photos.classes[y]}' for p, y in zip(photos.paths, photos.labels)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--variant", default="lite0")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fine-tune", action="store_true", help="also run effnet-train --fine-tune")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    photos = data_mod.load(args.data)
    t, v = data_mod.stratified_split(photos, args.val_split, args.seed)
    train, val = photos.subset(t), photos.subset(v)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_csv(work / "train.csv", train)
        write_csv(work / "val.csv", val)
        rows.append(linear_probe(args.variant, train, val, work, args.seed))
        rows.append(effnet_train("effnet-train (default)", work / "train.csv", work / "val.csv", work / "default",
                                 args.variant, ["--seed", str(args.seed)]))
        rows.append(effnet_train("effnet-train --head-init imagenet", work / "train.csv", work / "val.csv",
                                 work / "prior", args.variant, ["--seed", str(args.seed), "--head-init", "imagenet"]))
        if args.fine_tune:
            rows.append(effnet_train("effnet-train --fine-tune", work / "train.csv", work / "val.csv",
                                     work / "ft", args.variant, ["--seed", str(args.seed), "--fine-tune"]))
    probe = rows[0]["fp32"]
    m = machine_info()
    print(f"\n{m['cpu']}, {m['cores']} cores, int8 class {m['cpu_int8_class']}")
    print(f"{args.data}: {len(photos.classes)} classes; {len(train.paths)} training, {len(val.paths)} "
          f"validation photos (seed {args.seed})")
    print(f"{'candidate':<46} {'fp32':>6} {'int8':>6} {'vs probe':>9} {'wall s':>7}")
    for r in rows:
        int8 = "-" if r["int8"] is None else f"{100 * r['int8']:.1f}%"
        print(f"{r['candidate']:<46} {100 * r['fp32']:5.1f}% {int8:>6} {100 * (r['fp32'] - probe):+8.1f}p "
              f"{r['seconds']:7.1f}")
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "classes": photos.classes,
                                         "train": len(train.paths), "val": len(val.paths), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
