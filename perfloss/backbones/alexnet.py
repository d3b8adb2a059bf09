"""AlexNet ("one weird trick" variant, as in torchvision): ``features`` with taps ``relu1``..``relu5``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

from torch import nn

from .base import Stage

NAMES = ["alexnet"]
HEAD_PREFIXES = ("classifier.",)


def build(name: str = "alexnet", pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``({"features": Sequential}, stages)``; convs at indices 0, 3, 6, 8, 10 as in torchvision."""
    layers = [
        (nn.Conv2d(3, 64, 11, stride=4, padding=2), None),  # 0
        (nn.ReLU(inplace=False), "relu1"),  # 1
        (nn.MaxPool2d(3, 2), None),  # 2
        (nn.Conv2d(64, 192, 5, padding=2), None),  # 3
        (nn.ReLU(inplace=False), "relu2"),  # 4
        (nn.MaxPool2d(3, 2), None),  # 5
        (nn.Conv2d(192, 384, 3, padding=1), None),  # 6
        (nn.ReLU(inplace=False), "relu3"),  # 7
        (nn.Conv2d(384, 256, 3, padding=1), None),  # 8
        (nn.ReLU(inplace=False), "relu4"),  # 9
        (nn.Conv2d(256, 256, 3, padding=1), None),  # 10
        (nn.ReLU(inplace=False), "relu5"),  # 11
        (nn.MaxPool2d(3, 2), None),  # 12 (no tap: dropped by truncation, kept for the layout)
    ]
    stages = [(f"features.{i}", tap) for i, (_, tap) in enumerate(layers)]
    return OrderedDict(features=nn.Sequential(*(m for m, _ in layers))), stages
