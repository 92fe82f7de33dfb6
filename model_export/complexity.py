"""Multiply-accumulate and parameter counts from the architecture table (no torch needed).

`macs` counts convolution and classifier multiply-accumulates only. Google's published
EfficientNet-Lite figures (407 M for Lite0 @224, ...) also count the per-element work of
the unfolded network - BatchNorm scale and shift, ReLU6, residual adds - which `total_ops`
adds (it matches the published numbers to within 0.5 %). Parameters include BatchNorm's
scale and shift, as PyTorch's parameter count does.
"""
from __future__ import annotations

from dataclasses import dataclass

from effnet_lite.variants import NUM_CLASSES, get_variant

from .architecture import HEAD_CHANNELS, STEM_CHANNELS, decode


@dataclass
class Complexity:
    variant: str
    input_size: int
    macs: int           # conv + FC multiply-accumulates
    elementwise: int    # BN (2/element), ReLU6 (1/element), residual add (1/element)
    params: int

    @property
    def total_ops(self) -> int:
        """The quantity Google's published "MACs" column reports."""
        return self.macs + self.elementwise

    def __str__(self) -> str:
        return (f"{self.variant} @{self.input_size}: {self.macs / 1e6:,.0f} M conv/FC MACs "
                f"({self.total_ops / 1e6:,.0f} M with BN/ReLU6/add ops, Google's convention), "
                f"{self.params / 1e6:.3f} M parameters")


def count(variant: str, input_size: int | None = None, num_classes: int = NUM_CLASSES) -> Complexity:
    v = get_variant(variant)
    size = int(input_size or v.input_size)
    macs = elementwise = params = 0

    def conv(cin, cout, k, stride, groups=1, relu=True):
        nonlocal size, macs, elementwise, params
        size = -(-size // stride)
        outputs = size * size * cout
        macs += outputs * (cin // groups) * k * k
        elementwise += outputs * (3 if relu else 2)
        params += cout * (cin // groups) * k * k + 2 * cout
        return outputs

    conv(3, STEM_CHANNELS, 3, 2)
    stages = decode(v)
    for stage in stages:
        for b in stage:
            if b.kind == "ir":
                conv(b.in_ch, b.mid_ch, 1, 1)
            conv(b.mid_ch, b.mid_ch, b.kernel, b.stride, b.mid_ch)
            out = conv(b.mid_ch, b.out_ch, 1, 1, relu=False)
            elementwise += out if b.has_residual else 0
    conv(stages[-1][-1].out_ch, HEAD_CHANNELS, 1, 1)
    macs += HEAD_CHANNELS * num_classes
    params += HEAD_CHANNELS * num_classes + num_classes
    return Complexity(v.name, int(input_size or v.input_size), macs, elementwise, params)
