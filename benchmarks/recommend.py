"""effnet-bench's closing advice: which of the measured files to deploy on this machine.

The fastest file among those whose top-1 agreement with fp32 (the fp32 file of the same
variant, on the photos given with --data) is within one point of the best. int8 kernels
differ between CPU classes in speed (and, for files that are not pair-safe, in answers), so
the advice holds for the CPU class it was measured on, which it names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from effnet_lite import Classifier, ClassifierOptions, ImageError
from effnet_lite.cpu import int8_class
from effnet_lite.dataset import image_files

WITHIN = 0.01     # agreement within one point of the best counts as "as accurate"


def top1(path: str, backend: str, photos: list[Path]) -> np.ndarray:
    """Each photo's top-1 class (-1 for one that cannot be read)."""
    with Classifier.from_file(path, ClassifierOptions(backend=backend, max_results=1)) as clf:
        out = []
        for photo in photos:
            try:
                out.append(clf.classify(photo).categories[0].index)
            except ImageError:
                out.append(-1)
    return np.asarray(out)


def add_agreement(rows: list[dict], folder: Path, limit: int = 200) -> int:
    """Set row["agreement"] (top-1 agreement with the fp32 file of the same variant) on the
    file rows whose variant has an fp32 file among them; returns the photo count."""
    photos = image_files(folder)[:limit]
    files = {(r["path"], r["backend"]): r for r in rows if r["kind"] == "file"}
    answers = {key: top1(*key, photos) for key in files}
    for (path, backend), row in files.items():
        ref = next((answers[k] for k, r in files.items()
                    if r["precision"] == "fp32" and r["variant"] == row["variant"] and row["variant"]), None)
        if ref is not None:
            valid = ref >= 0
            agree = float(np.mean(answers[path, backend][valid] == ref[valid])) if valid.any() else None
            for r in rows:
                if r["kind"] == "file" and (r["path"], r["backend"]) == (path, backend):
                    r["agreement"] = agree
    return len(photos)


def recommend(rows: list[dict]) -> dict | None:
    """The advice, from the invoke medians (else 640x480 end to end) and the agreements."""
    def speed(r):
        return r["invoke"]["median_ms"] if "invoke" in r else r["e2e"]["640x480"]["median_ms"]

    files = [r for r in rows if r["kind"] == "file" and ("invoke" in r or "e2e" in r)]
    if not files:
        return None
    known = [r for r in files if r.get("agreement") is not None]
    if known:
        best = max(r["agreement"] for r in known)
        pick = min((r for r in known if r["agreement"] >= best - WITHIN), key=speed)
    else:
        best, pick = None, min(files, key=speed)
    return {"cpu_int8_class": int8_class().name, "name": pick["name"], "median_ms": speed(pick),
            "agreement": pick.get("agreement"), "best_agreement": best,
            "measured": "invoke" if "invoke" in pick else "e2e 640x480"}


def format_advice(advice: dict, photos: int) -> str:
    head = f"\nrecommendation for this machine ({advice['cpu_int8_class']}): {advice['name']}, "
    head += f"{advice['median_ms']:.2f} ms ({advice['measured']} median)"
    if advice["agreement"] is None:
        return head + ("; agreement with fp32 not measured (give --data PHOTOS and the fp32 file of "
                       "each variant to choose among equally accurate files only)")
    return head + (f"; top-1 agreement with fp32 {advice['agreement']:.1%} on {photos} photos (best "
                   f"{advice['best_agreement']:.1%}): the fastest within {WITHIN:.0%} of the best")
