"""EfficientNet-Lite architecture as data: a compact stage table decoded into block specs.

The string notation follows the EfficientNet papers / timm builder:
``ds`` = depthwise-separable block, ``ir`` = inverted residual (MBConv),
``r`` repeats, ``k`` kernel, ``s`` stride of the first block, ``e`` expansion, ``c`` out channels.
The Lite family drops squeeze-excite, uses ReLU6, and keeps stem, head and the
repeats of the first and last stage fixed when scaling.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from effnet_lite.variants import Variant

STAGES = (
    "ds_r1_k3_s1_e1_c16",
    "ir_r2_k3_s2_e6_c24",
    "ir_r2_k5_s2_e6_c40",
    "ir_r3_k3_s2_e6_c80",
    "ir_r3_k5_s1_e6_c112",
    "ir_r4_k5_s2_e6_c192",
    "ir_r1_k3_s1_e6_c320",
)
STEM_CHANNELS = 32      # not scaled in Lite
HEAD_CHANNELS = 1280    # not scaled in Lite
BN_EPS = 1e-3           # TF's BatchNorm epsilon


@dataclass(frozen=True)
class BlockSpec:
    kind: str           # "ds" or "ir"
    in_ch: int
    out_ch: int
    mid_ch: int         # expanded width (== in_ch for "ds")
    kernel: int
    stride: int

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def round_channels(channels: float, multiplier: float, divisor: int = 8) -> int:
    """Scale and round to a multiple of `divisor`, never below 90 % of the scaled value."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _parse(stage: str) -> dict:
    kind, *opts = stage.split("_")
    parsed = {"kind": kind}
    for opt in opts:
        key, value = re.match(r"([a-z]+)(\d+)", opt).groups()
        parsed[key] = int(value)
    return parsed


def decode(variant: Variant) -> list[list[BlockSpec]]:
    """Block specs per stage for a variant (the order of timm's ``blocks.S.B``)."""
    stages: list[list[BlockSpec]] = []
    in_ch = STEM_CHANNELS
    last = len(STAGES) - 1
    for i, text in enumerate(STAGES):
        p = _parse(text)
        repeats = p["r"] if i in (0, last) else int(math.ceil(p["r"] * variant.depth))
        out_ch = round_channels(p["c"], variant.width)
        blocks = []
        for b in range(repeats):
            stride = p["s"] if b == 0 else 1
            blocks.append(BlockSpec(p["kind"], in_ch, out_ch, in_ch * p["e"], p["k"], stride))
            in_ch = out_ch
        stages.append(blocks)
    return stages
