"""VGG 11/13/16/19, with and without BatchNorm (torchvision's ``features`` layout and indices).

Taps: ``conv{b}_{i}`` (the conv's own output, before BN in the _bn variants), ``relu{b}_{i}`` and
``pool{b}`` (after the b-th pool), with b the block and i the conv inside it, counted from 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

from torch import nn

from .base import Stage

# Channels per conv, "M" for a 2x2 max-pool (torchvision's configurations A, B, D, E).
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
NAMES = [n for base in CONFIGS for n in (base, base + "_bn")]
HEAD_PREFIXES = ("classifier.",)


def build(name: str, pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``({"features": Sequential}, stages)`` for ``name`` in :data:`NAMES`.

    ``pooling="avg"`` uses 2x2 average pools instead of max-pools (the perceptual-gradient-network
    paper's VGG-19); the indices, and so the state-dict keys, do not change.
    """
    batch_norm = name.endswith("_bn")
    config = CONFIGS[name[: -len("_bn")] if batch_norm else name]
    layers: List[nn.Module] = []
    stages: List[Stage] = []

    def add(module: nn.Module, tap):
        stages.append((f"features.{len(layers)}", tap))
        layers.append(module)

    block, conv, in_channels = 1, 1, 3
    for item in config:
        if item == "M":
            add(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2), f"pool{block}")
            block, conv = block + 1, 1
        else:
            add(nn.Conv2d(in_channels, item, 3, padding=1), f"conv{block}_{conv}")
            if batch_norm:
                add(nn.BatchNorm2d(item), None)
            add(nn.ReLU(inplace=False), f"relu{block}_{conv}")
            in_channels, conv = item, conv + 1
    return OrderedDict(features=nn.Sequential(*layers)), stages
