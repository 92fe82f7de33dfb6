"""What a latency benchmark times: model files on a backend, or PyTorch eager fp32.

Every candidate offers the same two calls: `invoke()` on a prepared input tensor, and
`end_to_end(jpeg)` from JPEG bytes to the top-5 classes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effnet_lite import Classifier, ClassifierOptions


@dataclass
class Candidate:
    label: str
    kind: str                   # "file" or "torch"
    threads: int
    backend: str
    variant: str = ""
    precision: str = ""
    path: Path | None = None
    size_bytes: int = 0
    load_ms: float = 0.0
    extra: dict = field(default_factory=dict)

    def load(self) -> None:
        raise NotImplementedError

    def invoke(self) -> None:
        raise NotImplementedError

    def end_to_end(self, jpeg: bytes):
        raise NotImplementedError


class FileCandidate(Candidate):
    def load(self):
        start = time.perf_counter()
        self.clf = Classifier.from_file(self.path, ClassifierOptions(
            max_results=5, num_threads=self.threads, backend=self.backend))
        self.load_ms = (time.perf_counter() - start) * 1e3
        meta = self.clf.metadata
        self.variant = meta.variant if meta else ""
        self.precision = meta.precision if meta else str(self.clf.io.input_dtype)
        size = self.clf.io.config.size
        self.x = self.clf.io.to_input(np.full((size, size, 3), 128, np.uint8))

    def invoke(self):
        self.clf.backend.run(self.x)

    def end_to_end(self, jpeg):
        return self.clf.classify(jpeg)


class TorchCandidate(Candidate):
    """PyTorch eager fp32 (see torch_reference): the baseline users would otherwise run."""

    def load(self):
        import torch
        from .torch_reference import TorchReference
        self.torch = torch
        start = time.perf_counter()
        torch.set_num_threads(self.threads)
        self.ref = TorchReference(self.variant, self.extra.get("random_init", False))
        size = self.ref.model.input_size
        self.x = torch.zeros(1, 3, size, size)
        self.ref.probabilities(self.x)
        self.load_ms = (time.perf_counter() - start) * 1e3

    def invoke(self):
        self.torch.set_num_threads(self.threads)   # torch's setting is global: set it per call
        with self.torch.no_grad():
            self.ref.model(self.x)

    def end_to_end(self, jpeg):
        self.torch.set_num_threads(self.threads)
        return self.ref.probabilities(self.ref.input(jpeg)).topk(5)


def file_candidates(paths, threads, backends=None) -> list[Candidate]:
    from effnet_lite.backends import KIND_BY_SUFFIX, available_backends
    out = []
    for path in map(Path, paths):
        kind = KIND_BY_SUFFIX.get(path.suffix.lower())
        names = [b for b in (backends or available_backends(kind)[:1]) if b in available_backends(kind)]
        for backend in names:
            for n in threads:
                out.append(FileCandidate(f"{path.name} [{backend}]", "file", n, backend, path=path,
                                         size_bytes=path.stat().st_size))
    return out


def torch_candidates(variants, threads, random_init=False) -> list[Candidate]:
    return [TorchCandidate(f"{v} fp32 [torch eager]", "torch", n, "torch", variant=v,
                           precision="fp32", extra={"random_init": random_init})
            for v in variants for n in threads]


def peak_rss_mb(candidate: Candidate) -> float | None:
    """Peak resident memory of a fresh process that loads the candidate and runs it."""
    import json
    import subprocess
    import sys
    code = ("import json, sys\n"
            "from effnet_lite.benchmarks.candidates import FileCandidate, TorchCandidate\n"
            "from pathlib import Path\n"
            "c = json.loads(sys.argv[1]); cls = TorchCandidate if c['kind'] == 'torch' else FileCandidate\n"
            "cand = cls(c['label'], c['kind'], c['threads'], c['backend'], variant=c['variant'],"
            " path=Path(c['path']) if c['path'] else None, extra=c['extra'])\n"
            "cand.load(); [cand.invoke() for _ in range(3)]\n"
            "from effnet_lite.benchmarks.peak_memory import own_peak_rss_mb\n"
            "print(own_peak_rss_mb())\n")
    spec = {"label": candidate.label, "kind": candidate.kind, "threads": candidate.threads,
            "backend": candidate.backend, "variant": candidate.variant,
            "path": str(candidate.path) if candidate.path else "", "extra": candidate.extra}
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True,
                          text=True, timeout=600, env=env)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None
