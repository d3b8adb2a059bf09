"""Inception-v3 (torchvision's ``Inception3`` layout and its ImageNet weights' ``transform_input``).

Taps: ``Conv2d_1a_3x3``, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``, ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3`` (each
conv-BN-ReLU's output) and ``Mixed_5b``..``Mixed_7c`` (each module's concatenated branches). ``AuxLogits``
and ``fc`` are not built; their keys in torchvision's file are ignored. Smallest input: 75x75.

torchvision's modules call ``F.avg_pool2d`` / ``F.max_pool2d``; here they are parameter-free
``nn.AvgPool2d`` / ``nn.MaxPool2d`` attributes (same arithmetic, same state-dict keys), so every pool
is a module the lean engine recognises.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from torch import nn

from .base import Stage
from .googlenet import BasicConv2d, TransformInput

NAMES = ["inception_v3"]
HEAD_PREFIXES = ("AuxLogits.", "fc.")


def _avg_pool_3x3() -> nn.AvgPool2d:
    # F.avg_pool2d(x, 3, stride=1, padding=1): padded zeros count in the mean, as in torchvision
    return nn.AvgPool2d(3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 module: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.pool = _avg_pool_3x3()
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(self.pool(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 grid reduction: 3x3 s2 | 1x1 -> 3x3 -> 3x3 s2 | 3x3 s2 max-pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, self.pool(x)], 1)


class InceptionC(nn.Module):
    """17x17 module with factorised 7x7 convs (1x7 and 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.pool = _avg_pool_3x3()
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 grid reduction: 1x1 -> 3x3 s2 | 1x1 -> 1x7 -> 7x1 -> 3x3 s2 | 3x3 s2 max-pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, self.pool(x)], 1)


class InceptionE(nn.Module):
    """8x8 module whose 3x3 branches end in parallel 1x3 and 3x1 convs, concatenated."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.pool = _avg_pool_3x3()
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))], 1)


def build(name: str = "inception_v3", pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``(children, stages)`` with torchvision's attribute names (Conv2d_1a_3x3, ..., Mixed_7c)."""
    children: Dict[str, nn.Module] = OrderedDict(
        transform_input=TransformInput(),
        Conv2d_1a_3x3=BasicConv2d(3, 32, 3, stride=2),
        Conv2d_2a_3x3=BasicConv2d(32, 32, 3),
        Conv2d_2b_3x3=BasicConv2d(32, 64, 3, padding=1),
        maxpool1=nn.MaxPool2d(3, stride=2),
        Conv2d_3b_1x1=BasicConv2d(64, 80, 1),
        Conv2d_4a_3x3=BasicConv2d(80, 192, 3),
        maxpool2=nn.MaxPool2d(3, stride=2),
        Mixed_5b=InceptionA(192, pool_features=32),
        Mixed_5c=InceptionA(256, pool_features=64),
        Mixed_5d=InceptionA(288, pool_features=64),
        Mixed_6a=InceptionB(288),
        Mixed_6b=InceptionC(768, channels_7x7=128),
        Mixed_6c=InceptionC(768, channels_7x7=160),
        Mixed_6d=InceptionC(768, channels_7x7=160),
        Mixed_6e=InceptionC(768, channels_7x7=192),
        Mixed_7a=InceptionD(768),
        Mixed_7b=InceptionE(1280),
        Mixed_7c=InceptionE(2048),
    )
    stages = [(key, None if key.startswith(("maxpool", "transform")) else key) for key in children]
    return children, stages
