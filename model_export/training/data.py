"""The photos a training run uses: where they come from, their class names, the split.

DATA is a folder with one sub-folder per class (the class is the sub-folder's name, classes
in sorted order) or a CSV of `path,label` (paths relative to the CSV). Everything a user can
get wrong is found here, before any model is loaded, and reported in one line.
"""
from __future__ import annotations

import csv
import hashlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effnet_lite.dataset import IMAGE_SUFFIXES

MAX_LABEL_CHARS = 200
MIN_VAL_PER_CLASS = 2      # below this a class's recall on validation means little


class DataError(ValueError):
    """A problem with the training data (one line; the command exits 2)."""


@dataclass
class Photos:
    paths: list[Path]
    labels: list[int]                 # index into `classes`
    classes: list[str]
    warnings: list[str] = field(default_factory=list)

    def subset(self, index) -> "Photos":
        return Photos([self.paths[i] for i in index], [self.labels[i] for i in index], self.classes)

    def counts(self) -> list[int]:
        return np.bincount(np.asarray(self.labels, int), minlength=len(self.classes)).tolist()


def shown(path) -> str:
    """A path as a one-line message may hold it (control characters escaped)."""
    text = str(path)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check_label(name: str, where: str) -> str:
    """A class name a labels file, JSON and every tool can carry: one line, printable."""
    text = name.strip()
    if not text:
        raise DataError(f"{where}: empty class name")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise DataError(f"{where}: class name {text[:60]!r} holds a newline or another control "
                        "character: rename it")
    if len(text) > MAX_LABEL_CHARS:
        raise DataError(f"{where}: class name is {len(text)} characters (at most {MAX_LABEL_CHARS})")
    return text


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def from_folder(folder: Path) -> Photos:
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot read the folder ({e.strerror or e})") from None
    warnings, classes, paths, labels = [], [], [], []
    other = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image(p))
    if other:
        warnings.append(f"{folder}: {len(other)} image(s) directly in the folder, not in a class "
                        f"sub-folder, are ignored (e.g. {other[0]})")
    for sub in subdirs:
        try:
            name = sub.name.encode("utf-8").decode("utf-8")
        except UnicodeError:
            raise DataError(f"{sub}: the folder name is not valid UTF-8: rename it") from None
        name = check_label(name, shown(sub))
        files = sorted(p for p in sub.rglob("*") if p.is_file() and _is_image(p))
        if not files:
            warnings.append(f"{sub}: no images: class {name!r} is left out")
            continue
        if name in classes:
            raise DataError(f"{sub}: class {name!r} appears twice (folder names differ only in spaces)")
        classes.append(name)
        paths += files
        labels += [len(classes) - 1] * len(files)
    return Photos(paths, labels, classes, warnings)


def from_csv(path: Path) -> Photos:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the CSV ({e})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    items = []
    for n, row in enumerate(rows, 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise DataError(f"{path}, line {n}: expected 2 columns (path,label), found {len(row)}")
        file = Path(row[0].strip())
        items.append((file if file.is_absolute() else path.parent / file, check_label(row[1], f"{path}, line {n}")))
    classes = sorted({label for _, label in items})
    index = {c: i for i, c in enumerate(classes)}
    missing = [str(p) for p, _ in items if not p.is_file()]
    warnings = [f"{path}: {len(missing)} listed file(s) do not exist and are left out (e.g. {missing[0]})"] \
        if missing else []
    kept = [(p, index[c]) for p, c in items if p.is_file()]
    return Photos([p for p, _ in kept], [i for _, i in kept], classes, warnings)


def load(source: Path) -> Photos:
    """The photos of DATA (a folder of class folders, or a CSV), checked."""
    if source.is_dir():
        photos = from_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        photos = from_csv(source)
    else:
        raise DataError(f"{source}: not a folder of class sub-folders or a .csv file of path,label")
    present = sorted(set(photos.labels))
    if len(present) < 2:
        found = f"only {photos.classes[present[0]]!r}" if present else "none"
        raise DataError(f"{source}: a classifier needs at least 2 classes with photos; found {found}")
    if len(present) != len(photos.classes):        # (a CSV whose files are all missing for a class)
        keep = {old: new for new, old in enumerate(present)}
        photos = Photos(photos.paths, [keep[i] for i in photos.labels], [photos.classes[i] for i in present],
                        photos.warnings)
    return photos


def stratified_split(photos: Photos, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: `fraction` of each class to validation (at least one photo of
    every class with two or more), seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    labels = np.asarray(photos.labels)
    for c in range(len(photos.classes)):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        k = int(round(fraction * len(members)))
        k = min(max(k, 1 if len(members) >= 2 else 0), len(members) - 1)
        val += members[:k].tolist()
        train += members[k:].tolist()
    return sorted(train), sorted(val)


def content_hashes(paths) -> list[str]:
    out = []
    for p in paths:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError:
            out.append(f"unreadable:{p}")
            continue
        out.append(h.hexdigest())
    return out


def check_disjoint(train: Photos, val: Photos, what: str = "validation") -> None:
    """The same photo (by content) in training and validation inflates the figures: refuse."""
    seen = dict(zip(content_hashes(train.paths), train.paths))
    both = [(seen[h], p) for h, p in zip(content_hashes(val.paths), val.paths) if h in seen]
    if both:
        a, b = both[0]
        same = "" if a == b else f" = {b}"
        raise DataError(f"{len(both)} photo(s) are in both the training and the {what} data "
                        f"(e.g. {a}{same}): remove them from one")


def check_validation(train: Photos, val: Photos) -> list[str]:
    """Warnings when validation is too small to measure much; an error when a class has
    nothing to train on."""
    problems, few = [], []
    for c, (n_train, n_val) in enumerate(zip(train.counts(), val.counts())):
        if n_train == 0:
            raise DataError(f"class {train.classes[c]!r} has no training photos "
                            f"({n_val} in validation): give it more photos")
        if n_val < MIN_VAL_PER_CLASS:
            few.append(f"{train.classes[c]!r}: {n_val}")
    if few:
        problems.append(f"{len(few)} class(es) have fewer than {MIN_VAL_PER_CLASS} validation photos "
                        f"({', '.join(few[:3])}{', ...' if len(few) > 3 else ''}): their recall "
                        "cannot be measured")
    if len(val.paths) < 10:
        problems.append(f"validation has only {len(val.paths)} photos: one more mistake moves "
                        f"accuracy by {100 / max(len(val.paths), 1):.0f} points")
    return problems
