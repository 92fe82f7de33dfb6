"""The bundled ImageNet-1k class list (index → WordNet id, readable name)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_TABLE = Path(__file__).with_name("data") / "imagenet_classes.tsv"


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, str], ...]:
    rows = []
    for line in _TABLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _, wnid, name = line.split("\t")
            rows.append((wnid, name))
    return tuple(rows)


def imagenet_labels() -> list[str]:
    """The 1000 readable class names in the standard (sorted-wnid) order."""
    return [name for _, name in _rows()]


def imagenet_wnids() -> list[str]:
    return [wnid for wnid, _ in _rows()]
