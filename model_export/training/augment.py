"""Augmented views of a training photo: a random resized crop, a horizontal flip, mild colour
changes. Seeded per photo and view, so a run (and a resumed run) sees the same views."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from effnet_lite.preprocess import INTERPOLATIONS, PreprocessConfig

# of the photo's area. The frozen head's cached views stay near what the deployed centre crop
# shows (its inputs are the backbone's features of the whole subject: measured against 30-100 %
# on the train study's six samples, docs/train.md); fine-tuning's fresh views vary more
HEAD_SCALE = (0.70, 1.0)
SCALE = (0.30, 1.0)
RATIO = (3 / 4, 4 / 3)
COLOUR = 0.2                 # brightness, contrast and saturation vary by up to ±20 %


def view_rng(seed: int, digest: str, view: int) -> np.random.Generator:
    """The generator of one view of a photo, keyed by its content (SHA-256 hex digest)."""
    return np.random.default_rng([seed, int(digest[:15], 16), view])


def random_view(img: Image.Image, config: PreprocessConfig, rng: np.random.Generator,
                scale: tuple = SCALE) -> np.ndarray:
    """One augmented size x size uint8 crop of an RGB image, of `scale` of its area."""
    w, h = img.size
    for _ in range(10):      # as torchvision's RandomResizedCrop: try, then fall back to the centre
        area = w * h * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(w, h)
        x, y = (w - cw) // 2, (h - ch) // 2
    size = config.size
    view = img.resize((size, size), INTERPOLATIONS[config.interpolation], box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhance(view).enhance(float(rng.uniform(1 - COLOUR, 1 + COLOUR)))
    return np.asarray(view)
