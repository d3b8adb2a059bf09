"""SqueezeNet 1.1 (torchvision's ``features`` layout): taps ``relu1`` and ``fire2``..``fire9``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from torch import nn

from .base import Stage

NAMES = ["squeezenet1_1"]
HEAD_PREFIXES = ("classifier.",)


class Fire(nn.Module):
    """1x1 squeeze, then 1x1 and 3x3 expands side by side, concatenated over channels."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=False)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=False)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        a = self.expand1x1_activation(self.expand1x1(s))
        b = self.expand3x3_activation(self.expand3x3(s))
        return torch.cat([a, b], 1)


def build(name: str = "squeezenet1_1", pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``({"features": Sequential}, stages)``; Fire modules at indices 3, 4, 6, 7, 9, 10, 11, 12."""
    layers = [
        (nn.Conv2d(3, 64, 3, stride=2), None),  # 0
        (nn.ReLU(inplace=False), "relu1"),  # 1
        (nn.MaxPool2d(3, 2, ceil_mode=True), None),  # 2
        (Fire(64, 16, 64, 64), "fire2"),  # 3
        (Fire(128, 16, 64, 64), "fire3"),  # 4
        (nn.MaxPool2d(3, 2, ceil_mode=True), None),  # 5
        (Fire(128, 32, 128, 128), "fire4"),  # 6
        (Fire(256, 32, 128, 128), "fire5"),  # 7
        (nn.MaxPool2d(3, 2, ceil_mode=True), None),  # 8
        (Fire(256, 48, 192, 192), "fire6"),  # 9
        (Fire(384, 48, 192, 192), "fire7"),  # 10
        (Fire(384, 64, 256, 256), "fire8"),  # 11
        (Fire(512, 64, 256, 256), "fire9"),  # 12
    ]
    stages = [(f"features.{i}", tap) for i, (_, tap) in enumerate(layers)]
    return OrderedDict(features=nn.Sequential(*(m for m, _ in layers))), stages
