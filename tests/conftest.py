"""Shared fixtures: the real dev photos (skipped with a reason when absent) and
scikit-image's bundled photos (always available), preprocessed by the runtime."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from runtime.preprocess import PreprocessConfig, normalize, preprocess
from runtime.variants import get_variant

ROOT = Path(__file__).resolve().parents[1]
DEV_DIR = ROOT.parent / "shared" / "data" / "imagenet-sample-dev"


def dev_rows() -> list[dict]:
    """(file, class_index) rows sorted by file name, or a skip when the folder is absent."""
    labels = DEV_DIR / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"dev photos not found at {DEV_DIR} (CI has them beside the clone)")
    with open(labels, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["file"])
    return [{"path": DEV_DIR / r["file"], "label": int(r["class_index"])} for r in rows]


def skimage_photos() -> dict[str, np.ndarray]:
    """Real photos that scikit-image installs: name → HxWx3 uint8."""
    from skimage import data
    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut()}


def variant_config(name: str, size: int | None = None) -> PreprocessConfig:
    v = get_variant(name)
    return PreprocessConfig(size or v.input_size, v.crop_pct, v.interpolation, v.mean, v.std)


def nchw_batch(sources, variant: str) -> np.ndarray:
    """The reference float input (N, 3, H, W) for PyTorch."""
    v, cfg = get_variant(variant), variant_config(variant)
    return np.stack([normalize(preprocess(s, cfg), v.mean, v.std) for s in sources]).transpose(0, 3, 1, 2)


@pytest.fixture(scope="session")
def dev():
    return dev_rows()


@pytest.fixture(scope="session")
def photos():
    return skimage_photos()
