"""Labelled image folders in the three common layouts, sorted by path:
`labels.csv` (file, class_index), synset sub-folders (`n01440764/x.JPEG`), or
wnid-prefixed file names (`n01440764_x.JPEG`)."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from .labels import imagenet_wnids

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


class DatasetError(ValueError):
    pass


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files below `folder` (recursive, by IMAGE_SUFFIXES), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def labelled_images(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    labels_csv = folder / "labels.csv"
    if labels_csv.is_file():
        with open(labels_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"file", "class_index"} <= set(rows[0]):
            raise DatasetError(f"{labels_csv}: needs the columns file, class_index")
        items = [(folder / r["file"], int(r["class_index"])) for r in rows]
    else:
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        items = []
        for p in folder.rglob("*"):
            if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            wnid = p.parent.name if p.parent.name in index else None
            m = re.match(r"(n\d{8})_", p.name)
            wnid = wnid or (m.group(1) if m and m.group(1) in index else None)
            if wnid is not None:
                items.append((p, index[wnid]))
    if not items:
        raise DatasetError(f"{folder}: no labelled images (expected labels.csv, synset "
                           "sub-folders like n01440764/, or files named n01440764_*.JPEG)")
    return sorted(items, key=lambda item: str(item[0]))
