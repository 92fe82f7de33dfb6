"""The EfficientNet-Lite variant table: the one place these facts live.

Torch-free on purpose: the runtime reads it to fill in preprocessing defaults for
models that carry no metadata, and `model_export` builds the networks from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Google's EfficientNet-Lite was trained on inputs scaled to [-1, 1]:
# (pixel/255 - 0.5) / 0.5, i.e. mean = std = 0.5 on [0, 1] inputs.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
NUM_CLASSES = 1000


# Our int8 graphs take (pixel - 128) / 127.5, so that a uint8 pixel is the input's integer as
# it is: mean 128/255 on [0, 1] (the variant's std).
QUANTIZED_MEAN = (128 / 255,) * 3


def pixel_normalization(mean, std) -> tuple[list, list]:
    """mean/std on [0, 1] in pixel units (0-255), as the standard TFLite metadata states them:
    the float value the network computes on is (pixel - mean) / std."""
    return [255.0 * m for m in mean], [255.0 * s for s in std]


@dataclass(frozen=True)
class Variant:
    name: str
    width: float          # channel multiplier
    depth: float          # repeat multiplier
    input_size: int       # default square input resolution
    crop_pct: float       # centre-crop fraction used at evaluation
    interpolation: str    # "bicubic" or "bilinear"
    mean: tuple = MEAN
    std: tuple = STD

    @property
    def resize_size(self) -> int:
        """Shorter-side size before the centre crop (timm's eval transform)."""
        return int(math.floor(self.input_size / self.crop_pct))


VARIANTS = {
    v.name: v
    for v in (
        Variant("lite0", 1.0, 1.0, 224, 0.875, "bicubic"),
        Variant("lite1", 1.0, 1.1, 240, 0.882, "bicubic"),
        Variant("lite2", 1.1, 1.2, 260, 0.890, "bicubic"),
        Variant("lite3", 1.2, 1.4, 300, 0.904, "bilinear"),
        Variant("lite4", 1.4, 1.8, 380, 0.920, "bilinear"),
    )
}


class UnknownVariantError(ValueError):
    pass


def get_variant(name: str) -> Variant:
    key = str(name).lower().replace("efficientnet-", "").replace("efficientnet_", "")
    key = key.replace("tf_", "")
    if key not in VARIANTS:
        raise UnknownVariantError(
            f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def variant_for_input_size(size: int) -> Variant | None:
    """Best guess for a model without metadata: the variant whose default size matches."""
    for v in VARIANTS.values():
        if v.input_size == size:
            return v
    return None
