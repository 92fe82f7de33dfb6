"""Fold every BatchNorm into the convolution before it (the form the exporters consume)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .model import EfficientNetLite


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv ← bn ∘ conv, computed in float64: w' = w·γ/σ, b' = β + (b − μ)·γ/σ."""
    factor = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
    weight = conv.weight.double() * factor.view(-1, 1, 1, 1)
    new_bias = bn.bias.double() + (bias - bn.running_mean.double()) * factor
    conv.weight.copy_(weight.to(conv.weight.dtype))
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))


def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """An equivalent copy of `model` with no BatchNorm: each is folded and replaced by Identity."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            bn = getattr(module, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                fold_conv_bn(getattr(module, conv_name), bn)
                setattr(module, bn_name, nn.Identity())
    folded.folded = True
    return folded


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
