"""The Python API, in the spirit of MediaPipe's ImageClassifier.

    with Classifier.from_file("lite0_int8.tflite", ClassifierOptions(max_results=3)) as c:
        for cat in c.classify("photo.jpg").categories:
            print(cat.label, cat.score)

Thread safety: preprocessing runs in the caller's thread; the interpreter, which is not
thread-safe, is guarded by a lock, so one Classifier can serve several threads (they
overlap decoding and resizing, and take turns at inference).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

from .backends import open_model
from .cpu import int8_class
from .errors import ImageError, ModelError
from .model_io import inspect_model
from .preprocess import DEFAULT_MAX_PIXELS, preprocess


@dataclass
class ClassifierOptions:
    max_results: int = 5
    score_threshold: float = 0.0
    category_allowlist: list | None = None    # labels (str) or class indices (int)
    category_denylist: list | None = None
    num_threads: int | None = None
    backend: str | None = None                # litert | tflite-runtime | tensorflow | onnxruntime
                                              # | onnxruntime-reference (int8 QDQ semantics, any CPU)
    exact: bool = False                       # bit-identical reference preprocessing (slower)
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Preprocessing overrides (for models without metadata, or to experiment)
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: tuple | None = None
    std: tuple | None = None


@dataclass
class Category:
    index: int
    label: str
    score: float


@dataclass
class ClassificationResult:
    categories: list
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Filter:
    allowed: np.ndarray | None = None
    denied: np.ndarray | None = None


class Classifier:
    def __init__(self, backend, options: ClassifierOptions | None = None):
        self.options = options or ClassifierOptions()
        self.backend = backend
        o = self.options
        self.io = inspect_model(backend, {"crop_pct": o.crop_pct, "interpolation": o.interpolation,
                                          "mean": o.mean, "std": o.std})
        self.labels = self.io.labels
        self._lock = threading.Lock()
        self._filter = _Filter(self._mask(o.category_allowlist), self._mask(o.category_denylist))

    @classmethod
    def from_file(cls, path, options: ClassifierOptions | None = None) -> "Classifier":
        options = options or ClassifierOptions()
        return cls(open_model(path, options.backend, options.num_threads), options)

    @property
    def metadata(self):
        return self.io.metadata

    @property
    def cpu_int8_class(self) -> str:
        """This CPU's int8 class, e.g. "x86-64 AVX2 (no VNNI)" (runtime.cpu)."""
        return int8_class().name

    @property
    def int8_caveat(self) -> str:
        """Why this file's answers may differ on this CPU class, or "" when they should not:
        an int8 ONNX file without pair-safe weights, run by saturating int8 kernels."""
        b, meta = self.backend, self.io.metadata
        if b is None or b.kind != "onnx" or b.name == "onnxruntime-reference" or not int8_class().saturates:
            return ""
        if meta is not None:       # ours: the metadata says what it holds, no scan needed
            if meta.precision != "int8" or meta.pair_safe:
                return ""
        elif not b.quantized:
            return ""
        made = "was not made pair-safe" if meta is not None else "was not made by effnet-lite-edge"
        return (f"this int8 ONNX file {made}: on this CPU ({int8_class().name}) onnxruntime's "
                "int8 kernels add two products in int16, which such a file can overflow, so its "
                "answers may differ from other machines' (re-export it, or use --backend "
                "onnxruntime-reference or a .tflite file)")

    def _mask(self, items) -> np.ndarray | None:
        if items is None:
            return None
        mask = np.zeros(len(self.labels), bool)
        by_name = {label.lower(): i for i, label in enumerate(self.labels)}
        for item in items:
            i = item if isinstance(item, (int, np.integer)) else by_name.get(str(item).lower())
            if i is None or not 0 <= i < len(mask):
                raise ValueError(f"unknown category {item!r} in allow/deny list")
            mask[i] = True
        return mask

    def preprocess(self, image) -> np.ndarray:
        """The model's input tensor for `image` (path, bytes, PIL image, HxWx3 uint8)."""
        o = self.options
        return self.io.to_input(preprocess(image, self.io.config, o.exact, o.max_pixels))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a prepared input tensor."""
        with self._lock:
            if self.backend is None:
                raise ModelError("this Classifier is closed")
            raw = self.backend.run(x)
        return self.io.to_scores(raw)

    def classify(self, image, *, max_results: int | None = None,
                 score_threshold: float | None = None) -> ClassificationResult:
        """Classify one image; `max_results` and `score_threshold` override the options'
        for this call (a service answers each request with its own)."""
        t0 = time.perf_counter()
        x = self.preprocess(image)
        t1 = time.perf_counter()
        probs = self.scores(x)
        t2 = time.perf_counter()
        source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else ""
        categories = self.top(probs, max_results, score_threshold)
        return ClassificationResult(categories, (t1 - t0) * 1e3, (t2 - t1) * 1e3, source)

    def top(self, probs: np.ndarray, max_results: int | None = None,
            score_threshold: float | None = None) -> list:
        o, f = self.options, self._filter
        max_results = o.max_results if max_results is None else max_results
        threshold = o.score_threshold if score_threshold is None else score_threshold
        masked = probs.copy()
        if f.allowed is not None:
            masked[~f.allowed] = -1
        if f.denied is not None:
            masked[f.denied] = -1
        k = len(masked) if max_results is None or max_results < 0 else min(max_results, len(masked))
        order = np.argsort(-masked, kind="stable")[:k]
        return [Category(int(i), self.labels[i], float(probs[i])) for i in order
                if masked[i] >= 0 and probs[i] >= threshold]

    def classify_many(self, images: Iterable) -> Iterator:
        """Yield a ClassificationResult per image, or the ImageError for an unreadable one
        (so one bad file does not stop a batch)."""
        for image in images:
            try:
                yield self.classify(image)
            except ImageError as e:
                yield e

    def close(self) -> None:
        """Release the interpreter; later calls raise ModelError."""
        with self._lock:
            self.backend = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
