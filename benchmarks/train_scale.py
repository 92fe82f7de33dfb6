"""effnet-train on a large folder: wall time, peak memory and cache size, in one run.

    python -m effnet_lite.benchmarks.train_scale DATA [DATA ...] --photos 3000 [--fine-tune | --ensemble]
        [--work DIR] [--json OUT]

The DATA folders (class sub-folders each) are merged into one folder of --photos photos, by
symbolic links, each class named `<set>-<class>`, taken in a seeded random order (so a part keeps
every class). When they hold fewer photos than asked, the rest are mirrored copies of theirs
(written once under --work): a mirror image is a different photo to the trainer's copy
detection (its thumbnail differs) unless the photo is symmetric, and such copies are merged
as a user's would be, so the run may use a few fewer. Then
`effnet-train FOLDER` runs with default settings (or --fine-tune, or --ensemble) as a user would, and its
wall time, peak RSS (the whole process, as the kernel counts it), cache size and phases are
printed. The figures hold for this machine (printed) and its load at the time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..model_export.training import data as data_mod
from .machine import machine_info
from .train_study import run_effnet_train


def merged_folder(sets: list[Path], photos: int, folder: Path) -> tuple[int, int]:
    """`photos` photos of `sets` as one folder of class folders: (originals, mirrored copies)."""
    found = []
    for s in sets:
        p = data_mod.load(s, min_classes=1)
        name = s.parent.name if s.name in ("train", "validation", "test", "Dataset", "data") else s.name
        found += [(path, f"{name}-{p.classes[y]}") for path, y in zip(p.paths, p.labels)]
    folder.mkdir(parents=True, exist_ok=True)
    found = [found[i] for i in np.random.default_rng(0).permutation(len(found))]
    originals = found[:photos]
    mirrored = [found[i % len(found)] for i in range(max(0, photos - len(found)))]
    for i, (path, label) in enumerate(originals):
        link = folder / label / f"{i:06d}{path.suffix.lower()}"
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(path.resolve())
    for i, (path, label) in enumerate(mirrored):
        copy = folder / label / f"m{i:06d}.jpg"
        if not copy.is_file():
            with Image.open(path) as im:
                ImageOps.mirror(im.convert("RGB")).save(copy, quality=92)
    return len(originals), len(mirrored)


def cache_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--photos", type=int, default=3000)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fine-tune", action="store_true")
    mode.add_argument("--ensemble", action="store_true")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "effnet-train-scale")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    folder = args.work / f"photos-{args.photos}"
    originals, mirrored = merged_folder(args.data, args.photos, folder)
    flags = [f for f, wanted in (("--fine-tune", args.fine_tune), ("--ensemble", args.ensemble)) if wanted]
    out = args.work / f"run-{args.photos}{''.join(f.replace('--', '-') for f in flags)}"
    if out.exists():
        shutil.rmtree(out)
    report, seconds, rss = run_effnet_train([folder, *flags], out, "train_scale")
    row = {"photos_asked": args.photos, "originals": originals, "mirrored": mirrored,
           "used": report["photos"]["used"], "classes": len(report["classes"]), "fine_tune": args.fine_tune,
           "ensemble": args.ensemble,
           "views": report.get("views"), "seconds": seconds, "peak_rss_mb": rss,
           "cache_mb": cache_mb(out / ".effnet-train"), "phases": report["seconds"],
           "estimate": report["headline"]["top1"], "interval": report["headline"]["interval"],
           "sets": [str(d) for d in args.data]}
    m = machine_info()
    print(f"{m['cpu']}, {m['cores']} cores, int8 class {m['cpu_int8_class']}")
    print(f"{row['used']} photos used ({originals} given, {mirrored} mirrored copies; {row['classes']} classes), "
          f"{' '.join(flags) or 'default settings'}, {row['views']} view(s): "
          f"{seconds:.0f} s wall, peak RSS {row['peak_rss_mb']:.0f} MB, cache {row['cache_mb']:.0f} MB")
    print("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))
    low, high = row["interval"]
    print(f"its estimate: {100 * row['estimate']:.1f} % ({100 * low:.1f}-{100 * high:.1f})")
    if args.json:           # a row per run: an existing file (of this machine) gets one more
        rows = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
        rows = [r for r in rows if (r["photos_asked"], r["fine_tune"], r.get("ensemble", False))
                != (args.photos, args.fine_tune, args.ensemble)]
        args.json.write_text(json.dumps({"machine": m, "rows": rows + [row]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
