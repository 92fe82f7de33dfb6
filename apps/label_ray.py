"""effnet-label --engine ray: the collection through Ray Data (the `cluster` extra).

read (the list of paths) → decode + preprocess as Ray tasks → a pool of actors, each holding
a Classifier → rows back to the driver, which writes the shards (so resuming works the same
as with the local engine). The model file is shipped to the workers through Ray's object
store, so they need no shared filesystem for it; the images must be readable from every
worker: a shared filesystem path, or a location pyarrow reads (s3://, gs://, hdfs://...).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from effnet_lite import Classifier, ClassifierOptions, ImageError
from effnet_lite.preprocess import preprocess

from effnet_lite.quiet import Captured

BATCH = 16


def ray_paths(source: str) -> list[str]:
    """A local folder or list file, or every file under a pyarrow-readable location."""
    from .label import list_source
    if Path(source).exists():
        return list_source(Path(source))
    import pyarrow.fs as pafs
    from effnet_lite.dataset import IMAGE_SUFFIXES
    fs, root = pafs.FileSystem.from_uri(source)
    scheme = source.split("://", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES)


def _read(path: str):
    """A local path as it is (Pillow opens it); a remote location's bytes through pyarrow."""
    if "://" not in path:
        return path
    import pyarrow.fs as pafs
    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_file(inner) as f:
        return f.read()


def _preprocess(batch: dict, config, exact: bool) -> dict:
    """Ray task: decode and crop; a bad image carries its error and an empty crop."""
    crops, errors = [], []
    for path in batch["path"]:
        try:
            crops.append(preprocess(_read(path), config, exact))
            errors.append("")
        except (ImageError, OSError) as e:
            crops.append(np.zeros((config.size, config.size, 3), np.uint8))
            errors.append(str(e).removeprefix(f"{path}: ").removeprefix("<bytes>: "))
    return {"path": list(batch["path"]), "crop": np.stack(crops), "error": errors}


class _Scorer:
    """Ray actor: one Classifier, opened from the model's bytes. Rows carry the top-k
    categories, or with `probabilities` every class's probability (for effnet-eval)."""

    def __init__(self, model_ref, suffix: str, options: dict, probabilities: bool = False):
        import ray
        model_bytes = ray.get(model_ref[0])     # wrapped in a list: Ray passes a bare ref as is
        fd, self.file = tempfile.mkstemp(suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        self.clf = Classifier.from_file(self.file, ClassifierOptions(**options))
        self.probabilities = probabilities

    def __call__(self, batch: dict) -> dict:
        out = {"path": [], "indices": [], "labels": [], "scores": [], "error": []}
        if self.probabilities:
            out = {"path": [], "probs": [], "error": []}
        for path, crop, error in zip(batch["path"], batch["crop"], batch["error"]):
            probs = None if error else self.clf.scores(self.clf.io.to_input(crop))
            out["path"].append(path)
            out["error"].append(error or None)
            if self.probabilities:
                out["probs"].append(probs if probs is not None else np.zeros(len(self.clf.labels), np.float32))
                continue
            cats = [] if probs is None else self.clf.top(probs)
            out["indices"].append([c.index for c in cats])
            out["labels"].append([c.label for c in cats])
            out["scores"].append([c.score for c in cats])
        return out


def _rows(model: str, options: ClassifierOptions, paths: list[str], actors: int, address: str | None,
          probabilities: bool):
    """Ray's output rows, in input order."""
    # Ray's own logging stays off our stderr (its C++ core reads this before starting)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "CRITICAL")
    import ray
    with Captured():      # the C++ core announces its log level on stderr
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    with Classifier.from_file(model, options) as clf:
        config = clf.io.config
    model_ref = ray.put(Path(model).read_bytes())
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(_preprocess, batch_size=BATCH, fn_kwargs={"config": config, "exact": options.exact})
    ds = ds.map_batches(_Scorer, batch_size=BATCH, concurrency=actors,
                        fn_constructor_args=([model_ref], Path(model).suffix, asdict(options), probabilities))
    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as e:     # a worker's failure, as one line
        from .label import LabelError
        raise LabelError(f"Ray: {' '.join(str(e).split())[:300]}") from None


def label_ray(model: str, options: ClassifierOptions, paths: list[str], actors: int, address: str | None):
    """effnet-label's rows, in input order, labelled by Ray."""
    if not paths:
        return
    for row in _rows(model, options, paths, actors, address, probabilities=False):
        yield {"path": row["path"], "indices": list(map(int, row["indices"])), "labels": list(row["labels"]),
               "scores": list(map(float, row["scores"])), "error": row["error"]}


def probabilities_ray(model: str, options: ClassifierOptions, paths: list[str], actors: int,
                      address: str | None):
    """effnet-eval's outcomes, in input order: each image's probabilities, or its ImageError."""
    for row in _rows(model, options, [str(p) for p in paths], actors, address, probabilities=True):
        yield ImageError(f"{row['path']}: {row['error']}") if row["error"] else np.asarray(row["probs"])
