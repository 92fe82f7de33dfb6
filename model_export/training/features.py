"""What the frozen part of the backbone makes of each photo, computed once and cached.

The frozen part runs as an fp32 TFLite file of our own graph, cut at the pooled features,
through the runtime's backend: on 2 cores that is 3-4x faster than PyTorch, and within 1e-5
of it (--fine-tune then trains the whole network in PyTorch: fit.py). Photos are worked on by
one thread per core, each with its own single-threaded interpreter (decoding and the
interpreter release the GIL): measured on 2 cores, 84 ms a photo at 9 crops against 165 in
one thread, where one interpreter on 2 threads leaves the decoding serial. Without --threads
every row comes from a single-threaded interpreter, so the cache is the same whatever the
number of cores.

Each photo's rows (its centre crop as the runtime makes it, then `views` augmented views)
are one `.npy` file named by the photo's SHA-256 (plain arrays, never pickles): a photo
deleted or added between runs changes nothing for the others, a killed run loses at most
one photo's work, and cross-validation folds share the same rows. The views are seeded by
the run's seed and the photo's content, not by its place in a list.
"""
from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from effnet_lite.backends import open_model
from effnet_lite.cores import workers_per_core
from effnet_lite.errors import ImageError
from effnet_lite.preprocess import PreprocessConfig, load_image, normalize, preprocess
from effnet_lite.progress import Progress, duration
from effnet_lite.quiet import Captured

from .. import tflite_writer
from ..folding import fold_batchnorm
from ..graph import build_graph, truncated
from .augment import HEAD_SCALE, random_view, view_rng


FORECAST_AFTER = 16     # photos computed before the time and disk a long run needs are forecast


class Backbone:
    """The model's layers up to the pooled features, as rows of uint8 crops. Interpreters are
    opened in the calling thread (opening one silences fd 2 for a moment, which must not
    overlap another thread's output), then lent to the worker threads one photo at a time."""

    def __init__(self, model, folder: Path, threads: int | None):
        graph = build_graph(fold_batchnorm(model), model)
        self.name = f"{model.variant.name}-pooled"
        path = folder / f"backbone-{self.name}.tflite"
        blob = tflite_writer.write_fp32(truncated(graph, "pooled"), {}, "effnet-train frozen layers")
        if not path.is_file() or path.read_bytes() != blob:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(path)
        self.path, self.threads, self.workers = path, threads, workers_per_core(threads)
        self.opened = 0
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self.ready(1)             # here, so that a file that cannot load fails before any work
        v = model.variant
        self.mean, self.std = v.mean, v.std

    def ready(self, n: int) -> None:
        """At least `n` interpreters, one for each thread that will run at once."""
        while self.opened < n:
            with Captured():      # LiteRT's delegate banner stays off our stderr
                self._idle.put(open_model(self.path, num_threads=self.threads))
            self.opened += 1

    def rows(self, crops: list[np.ndarray]) -> np.ndarray:
        """(crops, ...) rows of one photo, from an interpreter no other thread uses meanwhile."""
        backend = self._idle.get()
        try:
            outs = [backend.run(normalize(c, self.mean, self.std)[None]) for c in crops]
        finally:
            self._idle.put(backend)
        return np.stack([o.reshape(o.shape[1:]) if o.ndim == 2 else o[0].transpose(2, 0, 1)   # NHWC → CHW
                         for o in outs])


def crops_of(path: Path, digest: str, config: PreprocessConfig, views: int, seed: int) -> list[np.ndarray]:
    """The centre crop as the runtime makes it, then `views` augmented crops (ImageError if
    the photo cannot be read)."""
    centre = preprocess(path, config, exact=True)
    if not views:
        return [centre]
    img = load_image(path, config, draft=True)
    return [centre] + [random_view(img, config, view_rng(seed, digest, v), HEAD_SCALE) for v in range(views)]


class FeatureStore:
    """Rows of the frozen layers per photo: row 0 the centre crop (`config.crop_pct` of the
    photo), rows 1.. the views (of the whole photo, whatever the crop)."""

    def __init__(self, backbone: Backbone, config: PreprocessConfig, views: int, seed: int, cache: Path):
        self.backbone, self.config, self.views, self.seed = backbone, config, views, seed
        area = f"-area{HEAD_SCALE[0]:g}" if views else ""      # another range of views: another cache
        self.folder = cache / f"{backbone.name}-views{views}{area}-seed{seed}-crop{config.crop_pct:g}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.npy"

    def _load(self, digest: str, mmap: bool = False) -> np.ndarray | None:
        try:
            rows = np.load(self.path(digest), mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None               # missing, or cut short by a kill: computed again
        return rows if rows.ndim >= 2 and rows.shape[0] == 1 + self.views else None

    def compute(self, items: list[tuple[Path, str]], desc: str, log) -> list[tuple[Path, str]]:
        """Make the rows of every (path, digest) not cached yet; [(path, why)] of those that
        could not be read. A long job says what it will cost once the first photos are done."""
        todo = [(p, d) for p, d in items if self._load(d, mmap=True) is None]
        bad, done, t0 = [], 0, time.perf_counter()
        workers = min(self.backbone.workers, len(todo))
        pool = None
        if workers > 1:
            self.backbone.ready(workers)
            pool = ThreadPoolExecutor(workers)
        try:
            results = pool.map(self._make, todo) if pool else map(self._make, todo)
            with Progress(len(items), desc) as bar:
                bar.update(len(items) - len(todo))
                for (path, _), (error, nbytes) in zip(todo, results):
                    bar.update()
                    if error:
                        bad.append((path, error))
                        log(f"warning: skipped {error}")
                        continue
                    done += 1
                    if done == FORECAST_AFTER and len(todo) > 4 * FORECAST_AFTER:
                        left = (time.perf_counter() - t0) / done * (len(todo) - done)
                        bar.clear()
                        log(f"{desc}: {len(todo)} photos to compute, about {duration(left)} more and "
                            f"{len(todo) * nbytes / 2**20:.0f} MB of cache in {self.folder} "
                            f"(measured on the first {done})")
        finally:
            if pool:             # on Ctrl-C: the photos under way finish, the queued ones never start
                pool.shutdown(wait=True, cancel_futures=True)
        return bad

    def _make(self, item: tuple[Path, str]) -> tuple[str | None, int]:
        """One photo's rows, written to the cache: (None, bytes), or (why it failed, 0)."""
        path, digest = item
        try:
            crops = crops_of(path, digest, self.config, self.views, self.seed)
        except ImageError as e:
            return str(e), 0
        rows = self.backbone.rows(crops).astype(np.float32)
        tmp = self.folder / f".{digest}.tmp.npy"
        np.save(tmp, rows)
        tmp.replace(self.path(digest))
        return None, rows.nbytes

    def rows(self, digest: str) -> np.ndarray:
        """One photo's rows, memory-mapped (read from disk as they are used)."""
        rows = self._load(digest, mmap=True)
        if rows is None:
            raise FileNotFoundError(f"{self.path(digest)}: the cached features are missing or damaged")
        return rows

    def stack(self, digests: list[str]) -> np.ndarray:
        """(photos, 1 + views, ...) float32 in memory: for the pooled features (5 KB a row)."""
        first = self.rows(digests[0]) if digests else np.zeros((1 + self.views, 0), np.float32)
        out = np.empty((len(digests), *first.shape), np.float32)
        for i, d in enumerate(digests):
            out[i] = self.rows(d)
        return out
