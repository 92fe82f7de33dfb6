"""The --output folder of a run: what it was asked to do (run.json), whether it may be used
(new, empty, or the same run with --resume), and the split it used (split.csv)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from effnet_lite import __version__

RUN_FILE = "run.json"          # what this folder's run was asked to do
WORK = ".effnet-train"         # cached features and the state to resume from


class TrainError(RuntimeError):
    """One line for the user; exit 2."""


def prepare_output(out: Path, config: dict, resume: bool) -> None:
    """A new or empty folder, or (with --resume) the folder of the same run."""
    record = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: exists and is not a folder")
    if record.is_file():
        try:
            before = json.loads(record.read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError, TypeError):
            raise TrainError(f"{record}: unreadable; give another --output") from None
        if not resume:
            raise TrainError(f"{out} holds a training run already: --resume continues it, or give another --output")
        changed = [k for k in config if before.get(k) != config[k]]
        if changed:
            raise TrainError(f"{out} holds a different run ({changed[0]}: {before.get(changed[0])!r}, now "
                             f"{config[changed[0]]!r}): --resume needs the same settings, or give another --output")
        return
    if out.is_dir() and any(out.iterdir()):
        raise TrainError(f"{out} is not empty and holds no effnet-train run: give an empty or new folder")
    if resume:
        raise TrainError(f"{out}: no run to resume there")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"config": config, "version": __version__}, indent=1) + "\n", encoding="utf-8")


def write_split(out: Path, parts: dict) -> None:
    """split.csv: path,label,set of every photo (the split can be reproduced or reused)."""
    with open(out / "split.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "set"])
        for name, photos in parts.items():
            for p, y in zip(photos.paths, photos.labels) if photos is not None else ():
                w.writerow([str(p), photos.classes[y], name])
