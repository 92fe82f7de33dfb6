"""How many images to work on at once: one rule for effnet-infer's worker processes and
effnet-train's feature threads."""
from __future__ import annotations

import os

MAX_WORKERS = 4     # images at once, at most: each worker holds a model of its own


def workers_per_core(threads: int | None) -> int:
    """One image per core (at most MAX_WORKERS), or 1 when --threads asks for one interpreter
    with that many threads."""
    return 1 if threads else max(1, min(MAX_WORKERS, os.cpu_count() or 1))
