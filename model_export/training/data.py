"""The photos a training run uses: where they come from, their class names, the split.

DATA is a folder with one sub-folder per class (the class is the sub-folder's name, classes
in sorted order) or a CSV of `path,label` (paths relative to the CSV). Everything a user can
get wrong is found here, before any model is loaded, and reported in one line.
"""
from __future__ import annotations

import csv
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effnet_lite.dataset import IMAGE_SUFFIXES

from .duplicates import Fingerprint, groups

MAX_LABEL_CHARS = 200
MIN_PER_CLASS = 2          # a class needs photos to learn from and photos to be judged on


class DataError(ValueError):
    """A problem with the training data (one line; the command exits 2)."""


@dataclass
class Photos:
    paths: list[Path]
    labels: list[int]                 # index into `classes`
    classes: list[str]
    warnings: list[tuple[Path, str]] = field(default_factory=list)   # (where, what): printed "where: what"
    digests: list[str] | None = None   # SHA-256 of each file, once read (clean())

    def subset(self, index) -> "Photos":
        return Photos([self.paths[i] for i in index], [self.labels[i] for i in index], self.classes,
                      digests=None if self.digests is None else [self.digests[i] for i in index])

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


# folders that photo managers and operating systems put inside photo folders: thumbnails and
# resource forks, not photos of the class (Synology's @eaDir, freedesktop's .thumbnails, macOS)
NOT_PHOTOS = {"@eadir", "__macosx", "thumbs", ".thumbnails"}


def _not_photos(folder_name: str) -> bool:
    return folder_name.startswith((".", "@")) or folder_name.lower() in NOT_PHOTOS


def _is_image(path: Path, root: Path | None = None) -> bool:
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    inside = path.relative_to(root).parts[:-1] if root else ()
    return not any(_not_photos(part) for part in inside)


def from_folder(folder: Path) -> Photos:
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _not_photos(p.name))
    except OSError as e:
        raise DataError(f"{folder}: cannot read the folder ({e.strerror or e})") from None
    warnings, classes, paths, labels = [], [], [], []
    other = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image(p))
    if other:
        warnings.append((folder, f"{len(other)} image(s) directly in the folder, not in a class "
                                 f"sub-folder, are ignored (e.g. {other[0]})"))
    for sub in subdirs:
        try:
            name = sub.name.encode("utf-8").decode("utf-8")
        except UnicodeError:
            raise DataError(f"{sub}: the folder name is not valid UTF-8: rename it") from None
        name = check_label(name, shown(sub))
        files = sorted(p for p in sub.rglob("*") if _is_image(p, sub) and p.is_file())
        if not files:
            warnings.append((sub, f"no images: class {name!r} is left out"))
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
    warnings = [(path, f"{len(missing)} listed file(s) do not exist and are left out (e.g. {missing[0]})")] \
        if missing else []
    kept = [(p, index[c]) for p, c in items if p.is_file()]
    return Photos([p for p, _ in kept], [i for _, i in kept], classes, warnings)


def load(source: Path, min_classes: int = 2) -> Photos:
    """The photos of DATA (a folder of class folders, or a CSV), checked (a training set needs
    2 classes; a test set may hold photos of one)."""
    if source.is_dir():
        photos = from_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        photos = from_csv(source)
    else:
        raise DataError(f"{source}: not a folder of class sub-folders or a .csv file of path,label")
    present = sorted(set(photos.labels))
    if len(present) < min_classes:
        found = f"only {photos.classes[present[0]]!r}" if present else "none"
        why = "".join(f" ({what})" for _, what in photos.warnings[:1])    # e.g. paths that are not there
        raise DataError(f"{source}: a classifier needs at least 2 classes with photos; found {found}{why}"
                        if min_classes > 1 else f"{source}: no photos{why}")
    if len(present) != len(photos.classes):        # (a CSV whose files are all missing for a class)
        keep = {old: new for new, old in enumerate(present)}
        photos = Photos(photos.paths, [keep[i] for i in photos.labels], [photos.classes[i] for i in present],
                        photos.warnings)
    return photos


def clean(photos: Photos, prints: dict[Path, Fingerprint], bad: list[tuple[Path, str]], log,
          minimum: int = MIN_PER_CLASS) -> Photos:
    """One entry per distinct photo, with its digest. Unreadable files are left out (a line
    each); copies of one photo in one class are kept once (one line in all); a photo under two
    classes is label noise: every copy is left out, a line each case. A class left with fewer
    than MIN_PER_CLASS photos is an error that names it."""
    for path, why in bad:
        log(f"warning: skipped {why}")
    readable = [i for i, p in enumerate(photos.paths) if p in prints]
    group = groups([prints[photos.paths[i]] for i in readable])
    members: dict[int, list[int]] = {}
    for i, g in zip(readable, group):
        members.setdefault(g, []).append(i)
    kept, copies = [], []
    for g, ids in members.items():
        labels = sorted({photos.labels[i] for i in ids})
        if len(labels) > 1:
            names = " and ".join(repr(photos.classes[c]) for c in labels)
            log(f"warning: one photo is labelled {names}: {' = '.join(shown(photos.paths[i]) for i in ids[:3])}"
                f"{' = ...' if len(ids) > 3 else ''}; all {len(ids)} copies are left out")
            continue
        kept.append(ids[0])
        copies += [(i, ids[0]) for i in ids[1:]]
    if copies:
        dup, first = copies[0]
        log(f"warning: {len(copies)} copy(ies) of photos already in their class (the same file, or a "
            f"re-encoded or resized copy) are used once (e.g. {shown(photos.paths[dup])} = "
            f"{shown(photos.paths[first])})")
    kept.sort()
    out = photos.subset(kept)
    out.digests = [prints[photos.paths[i]].digest for i in kept]
    files = photos.counts()
    for c, n in enumerate(out.counts()):
        if n < minimum:
            what = "no readable photo" if n == 0 else f"{n} usable photo"
            raise DataError(f"class {photos.classes[c]!r} has {what} (of {files[c]} file(s)): it needs at "
                            f"least {MIN_PER_CLASS}, to learn from and to be judged on")
    return out


def check_apart(train: Photos, other: Photos, prints: dict[Path, Fingerprint], what: str = "test") -> None:
    """A photo (or a copy of it) in training and in `other` inflates `other`'s figures: refuse."""
    both = list(train.paths) + list(other.paths)
    group = groups([prints[p] for p in both])
    mine = {g: p for p, g in zip(train.paths, group)}
    shared = [(mine[g], p) for p, g in zip(other.paths, group[len(train.paths):]) if g in mine]
    if shared:
        a, b = shared[0]
        same = "" if a == b else f" = {shown(b)}"
        raise DataError(f"{len(shared)} photo(s) are in both the training and the {what} data "
                        f"(e.g. {shown(a)}{same}): remove them from one")


def from_pairs(items) -> Photos:
    """Photos from [(path, class name), ...]."""
    classes = sorted({check_label(str(c), str(p)) for p, c in items})
    index = {c: i for i, c in enumerate(classes)}
    return Photos([Path(p) for p, _ in items], [index[str(c).strip()] for _, c in items], classes)


def same_classes(other: Photos, classes: list[str], where) -> Photos:
    """`other` with the class numbers of `classes` (an unknown class is an error)."""
    unknown = [c for c in other.classes if c not in classes]
    if unknown:
        raise DataError(f"{where or 'test'}: class {unknown[0]!r} is not one of the training classes")
    index = {c: i for i, c in enumerate(classes)}
    return Photos(other.paths, [index[other.classes[i]] for i in other.labels], classes, other.warnings)
