"""EfficientNet-B0 and -B7 (torchvision's V1 ``features`` layout: MBConv blocks with SiLU and
squeeze-excitation).

Taps, torchvision's ``features`` indices: ``stem`` (features.0, conv-BN-SiLU), ``stage1``..``stage7``
(features.1..7, the MBConv stages) and ``top`` (features.8, the last 1x1 conv-BN-SiLU). No classifier.

Eval semantics: stochastic depth is the identity, so a residual block is ``block(x) + x``. BatchNorm
eps/momentum as torchvision: defaults for B0, eps 1e-3 / momentum 0.01 for B7 (lukemelas's port).
SiLU, the sigmoid gate and the gate's product with the features have no lean rule: the lean engine
keeps what eager keeps for those steps (``plan.report()`` lists them) and the rest of the network lean.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from .base import Stage

# name -> (width multiplier, depth multiplier, BatchNorm keyword arguments)
_SCALING = {
    "efficientnet_b0": (1.0, 1.0, {}),
    "efficientnet_b7": (2.0, 3.1, {"eps": 0.001, "momentum": 0.01}),
}
NAMES = list(_SCALING)
HEAD_PREFIXES = ("classifier.",)

# B0's stages (the paper's Table 1): expand ratio, kernel, stride of the first block, in, out, blocks.
_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


def _round_channels(channels: float) -> int:
    """torchvision's ``_make_divisible(channels, 8)``: nearest multiple of 8, never 10% below."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


def _conv_bn(in_channels: int, out_channels: int, kernel: int, norm: Callable[[int], nn.Module], stride: int = 1,
             groups: int = 1, silu: bool = True) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: keys ``0`` (conv, no bias, 'same' padding) and ``1`` (BN)."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                        bias=False), norm(out_channels)]
    if silu:
        layers.append(nn.SiLU(inplace=False))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(fc2(silu(fc1(mean over H, W of x)))), the fc layers 1x1 convs with bias."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.SiLU(inplace=False)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return gate * x


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> squeeze-excitation -> 1x1 project, plus the
    input when the block keeps resolution and width (stochastic depth: identity in eval)."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, in_channels: int, out_channels: int,
                 norm: Callable[[int], nn.Module]):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = _round_channels(in_channels * expand_ratio)
        layers: List[nn.Module] = []
        if expanded != in_channels:
            layers.append(_conv_bn(in_channels, expanded, 1, norm))
        layers.append(_conv_bn(expanded, expanded, kernel, norm, stride=stride, groups=expanded))
        layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4)))
        layers.append(_conv_bn(expanded, out_channels, 1, norm, silu=False))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


def build(name: str, pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``({"features": Sequential}, stages)``: features.0 stem, 1..7 the stages, 8 the last conv."""
    width, depth, bn_args = _SCALING[name]

    def norm(channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels, **bn_args)

    stem_channels = _round_channels(_STAGES[0][3] * width)
    layers: List[nn.Module] = [_conv_bn(3, stem_channels, 3, norm, stride=2)]
    for expand, kernel, stride, in_c, out_c, count in _STAGES:
        in_c, out_c = _round_channels(in_c * width), _round_channels(out_c * width)
        blocks = [MBConv(expand, kernel, stride if i == 0 else 1, in_c if i == 0 else out_c, out_c, norm)
                  for i in range(int(math.ceil(count * depth)))]
        layers.append(nn.Sequential(*blocks))
    last_in = _round_channels(_STAGES[-1][4] * width)
    layers.append(_conv_bn(last_in, 4 * last_in, 1, norm))
    taps = ["stem"] + [f"stage{i}" for i in range(1, len(_STAGES) + 1)] + ["top"]
    stages = [(f"features.{i}", tap) for i, tap in enumerate(taps)]
    return OrderedDict(features=nn.Sequential(*layers)), stages
