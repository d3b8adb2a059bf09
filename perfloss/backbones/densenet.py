"""DenseNet-121 (torchvision's ``features`` layout: growth 32, blocks 6/12/24/16, bottleneck 4x, 64 stem).

Taps: ``relu0`` (the stem ReLU, before the stem max-pool), ``denseblock1``..``denseblock4`` (each block's
concatenated features), ``transition1``..``transition3`` (after each transition's average pool) and
``norm5`` (the final BatchNorm; torchvision's ReLU after it belongs to the classifier path). No classifier.

Every dense layer is BN-ReLU-1x1 conv-BN-ReLU-3x3 conv on the concatenation of the block input and all
earlier layers' outputs: the lean engine keeps one sign mask per ReLU and nothing for BN, conv, concat
or the average pools.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn

from .base import Stage

NAMES = ["densenet121"]
HEAD_PREFIXES = ("classifier.",)

_GROWTH, _BLOCKS, _STEM, _BOTTLENECK = 32, (6, 12, 24, 16), 64, 4

# torchvision's densenet .pth files predate the ban on "." in module names: a dense layer's modules are
# saved as "norm.1", "conv.2", ... where the model has norm1, conv2 (torchvision renames them on load).
_LEGACY_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def rename_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``...denselayerN.norm.1.weight`` -> ``...denselayerN.norm1.weight``; other keys unchanged."""
    return {_LEGACY_KEY.sub(r"\1\2.", key): value for key, value in state_dict.items()}


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to 4 x growth channels, BN-ReLU-3x3 conv to growth channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        width = _BOTTLENECK * _GROWTH
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(width, _GROWTH, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    """Layers ``denselayer1``..``denselayerN``; each sees every earlier output concatenated over channels."""

    def __init__(self, count: int, in_channels: int):
        super().__init__()
        for i in range(count):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * _GROWTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], 1)
        return x


def _transition(in_channels: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv halving the channels, then a 2x2 average pool."""
    return nn.Sequential(OrderedDict(
        norm=nn.BatchNorm2d(in_channels),
        relu=nn.ReLU(inplace=False),
        conv=nn.Conv2d(in_channels, in_channels // 2, 1, bias=False),
        pool=nn.AvgPool2d(2, 2),
    ))


def build(name: str = "densenet121", pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``({"features": Sequential}, stages)`` with torchvision's module names inside ``features``."""
    layers: Dict[str, nn.Module] = OrderedDict(
        conv0=nn.Conv2d(3, _STEM, 7, stride=2, padding=3, bias=False),
        norm0=nn.BatchNorm2d(_STEM),
        relu0=nn.ReLU(inplace=False),
        pool0=nn.MaxPool2d(3, stride=2, padding=1),
    )
    taps = {"relu0": "relu0"}
    channels = _STEM
    for i, count in enumerate(_BLOCKS, start=1):
        layers[f"denseblock{i}"] = DenseBlock(count, channels)
        channels += count * _GROWTH
        if i < len(_BLOCKS):
            layers[f"transition{i}"] = _transition(channels)
            channels //= 2
    layers["norm5"] = nn.BatchNorm2d(channels)
    taps.update({key: key for key in layers if key.startswith(("denseblock", "transition", "norm5"))})
    stages = [(f"features.{key}", taps.get(key)) for key in layers]
    return OrderedDict(features=nn.Sequential(layers)), stages
