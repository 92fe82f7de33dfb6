"""EfficientNet-Lite0..4 in PyTorch, with timm's ``tf_efficientnet_liteN`` parameter names.

TF "SAME" padding is computed once for the input size the model is built for, so the
exported graph holds plain (possibly asymmetric) pads and no shape arithmetic.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from effnet_lite.variants import NUM_CLASSES, Variant, get_variant

from .architecture import BN_EPS, HEAD_CHANNELS, STEM_CHANNELS, BlockSpec, decode


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" (before, after) padding along one axis; the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "SAME" padding fixed for one input size (set by `EfficientNetLite`)."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, groups=1, bias=False):
        super().__init__(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=bias)
        self.pads = (0, 0, 0, 0)  # left, right, top, bottom

    def set_input_size(self, size: int) -> int:
        """Fix the padding for a `size`x`size` input; returns the output size."""
        k, s = self.kernel_size[0], self.stride[0]
        before, after = same_padding(size, k, s)
        self.pads = (before, after, before, after)
        return -(-size // s)

    def forward(self, x):
        left, right, top, bottom = self.pads
        if left == right and top == bottom:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """dw-conv → BN → ReLU6 → 1x1 conv → BN (timm's DepthwiseSeparableConv)."""

    conv_bn_pairs = (("conv_dw", "bn1"), ("conv_pw", "bn2"))

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.spec = spec
        self.conv_dw = SameConv2d(spec.in_ch, spec.in_ch, spec.kernel, spec.stride, groups=spec.in_ch)
        self.bn1 = _bn(spec.in_ch)
        self.conv_pw = SameConv2d(spec.in_ch, spec.out_ch, 1)
        self.bn2 = _bn(spec.out_ch)

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.spec.has_residual else y


class InvertedResidual(nn.Module):
    """1x1 expand → BN → ReLU6 → dw-conv → BN → ReLU6 → 1x1 project → BN (+ residual)."""

    conv_bn_pairs = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.spec = spec
        self.conv_pw = SameConv2d(spec.in_ch, spec.mid_ch, 1)
        self.bn1 = _bn(spec.mid_ch)
        self.conv_dw = SameConv2d(spec.mid_ch, spec.mid_ch, spec.kernel, spec.stride, groups=spec.mid_ch)
        self.bn2 = _bn(spec.mid_ch)
        self.conv_pwl = SameConv2d(spec.mid_ch, spec.out_ch, 1)
        self.bn3 = _bn(spec.out_ch)

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.spec.has_residual else y


BLOCK_TYPES = {"ds": DepthwiseSeparable, "ir": InvertedResidual}


class EfficientNetLite(nn.Module):
    conv_bn_pairs = (("conv_stem", "bn1"), ("conv_head", "bn2"))

    def __init__(self, variant: Variant | str, input_size: int | None = None,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        self.input_size = int(input_size or self.variant.input_size)
        self.stages = decode(self.variant)
        self.conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self.bn1 = _bn(STEM_CHANNELS)
        self.blocks = nn.Sequential(*(
            nn.Sequential(*(BLOCK_TYPES[s.kind](s) for s in stage)) for stage in self.stages))
        last_ch = self.stages[-1][-1].out_ch
        self.conv_head = SameConv2d(last_ch, HEAD_CHANNELS, 1)
        self.bn2 = _bn(HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self._fix_padding(self.input_size)

    def _fix_padding(self, size: int) -> None:
        """Walk the convolutions in execution order, fixing each one's SAME padding."""
        for m in self.modules():
            if isinstance(m, SameConv2d):
                # Each block's convs run in registration order; a block's
                # output size feeds the next, and 1x1/stride-1 convs keep it.
                size = m.set_input_size(size)

    def forward_features(self, x):
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return F.relu6(self.bn2(self.conv_head(x)))

    def forward(self, x):
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"model was built for {self.input_size}x{self.input_size} input, "
                             f"got {tuple(x.shape[-2:])}")
        x = self.forward_features(x).mean((2, 3))
        return self.classifier(x)


class Pair(nn.Module):
    """Two networks of one variant answering together: their logits averaged (so their
    probabilities' normalised geometric mean). effnet-train --ensemble deploys the frozen head's
    network with the fine-tuned one; a checkpoint holds them as members.0.* and members.1.*."""

    def __init__(self, first: EfficientNetLite, second: EfficientNetLite):
        super().__init__()
        if (first.variant.name, first.input_size, first.classifier.out_features) != \
                (second.variant.name, second.input_size, second.classifier.out_features):
            raise ValueError("a pair's networks must share the variant, input size and classes")
        self.members = nn.ModuleList([first, second])
        self.variant, self.input_size = first.variant, first.input_size

    @property
    def classifier(self) -> nn.Linear:      # (the classes; each member has its own weights)
        return self.members[0].classifier

    def forward(self, x):
        return (self.members[0](x) + self.members[1](x)) / 2


def create_model(variant: str, input_size: int | None = None,
                 num_classes: int = NUM_CLASSES) -> EfficientNetLite:
    """An untrained model in eval mode (see `weights.load_model` for real weights)."""
    return EfficientNetLite(variant, input_size, num_classes).eval()
