"""ResNet-18 (BasicBlock), ResNet-50 (Bottleneck, stride on the 3x3 conv: torchvision's V1.5) and
ResNeXt-50 32x4d (the same Bottleneck with a grouped 3x3 conv: 32 groups of width 4 per 64 planes).

Taps: ``relu`` (the stem ReLU, before the stem max-pool) and ``layer1``..``layer4``. No avgpool/fc.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .base import Stage

NAMES = ["resnet18", "resnet50", "resnext50_32x4d"]
HEAD_PREFIXES = ("fc.",)


def _downsample(in_channels: int, out_channels: int, stride: int) -> Optional[nn.Module]:
    """1x1 conv + BN on the identity path when the block changes resolution or width."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        if (groups, width_per_group) != (1, 64):
            raise ValueError("BasicBlock has no grouped variant: groups=1 and width_per_group=64 only")
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)  # stateless, so one module serves both activations
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `downsample is None` is decided at construction, not from tensor values: fx-traceable.
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        out_channels = planes * self.expansion
        width = planes * width_per_group // 64 * groups  # torchvision's int(planes * base_width / 64) * groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out)


# name -> (block, blocks per layer, groups, width per group)
_LAYOUT = {"resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64), "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
           "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4)}


def build(name: str, pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``(children, stages)`` with torchvision's attribute names: conv1, bn1, relu, maxpool, layer1..4."""
    block, counts, groups, width_per_group = _LAYOUT[name]
    children: Dict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(64),
        relu=nn.ReLU(inplace=False),
        maxpool=nn.MaxPool2d(3, stride=2, padding=1),
    )
    in_channels = 64
    for i, (planes, count) in enumerate(zip([64, 128, 256, 512], counts), start=1):
        blocks = []
        for j in range(count):
            blocks.append(block(in_channels, planes, stride=2 if (j == 0 and i > 1) else 1, groups=groups,
                                width_per_group=width_per_group))
            in_channels = planes * block.expansion
        children[f"layer{i}"] = nn.Sequential(*blocks)
    stages = [("conv1", None), ("bn1", None), ("relu", "relu"), ("maxpool", None)]
    stages += [(f"layer{i}", f"layer{i}") for i in range(1, 5)]
    return children, stages
