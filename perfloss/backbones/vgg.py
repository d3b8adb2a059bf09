"""VGG 11/13/16/19, with and without BatchNorm (torchvision's ``features`` layout and indices).

Taps: ``conv{b}_{i}`` (the conv's own output, before BN in the _bn variants), ``relu{b}_{i}`` and
``pool{b}`` (after the b-th pool), with b the block and i the conv inside it, counted from 1.

``pooling="l2"`` replaces each max-pool by DISTS's L2 pooling (Ding et al. 2020):
sqrt(hanning-window depthwise conv of x^2 + 1e-12), 3x3, stride 2, padding 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torch.fx
import torch.nn.functional as F
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
POOLINGS = ("max", "avg", "l2")

# DISTS's L2 pooling window: hanning(5)[1:-1] = (1/2, 1, 1/2), outer product normalised to sum 1.
L2_POOL_WINDOW = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))
L2_POOL_SCALE = 1.0 / 16.0
L2_POOL_STRIDE, L2_POOL_PADDING, L2_POOL_EPS = 2, 1, 1e-12


def l2_pool_weight(channels: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The depthwise (channels, 1, 3, 3) window of :func:`l2_pool2d`."""
    w = torch.tensor(L2_POOL_WINDOW, dtype=dtype, device=device) * L2_POOL_SCALE
    return w.expand(channels, 1, 3, 3)


def l2_pool2d(x: torch.Tensor) -> torch.Tensor:
    """sqrt(window * x^2 + eps), depthwise, stride 2: DISTS's L2 pooling."""
    pooled = F.conv2d(x.square(), l2_pool_weight(x.shape[1], x.dtype, x.device), None, L2_POOL_STRIDE,
                      L2_POOL_PADDING, 1, x.shape[1])
    return (pooled + L2_POOL_EPS).sqrt()


# One node in a torch.fx trace, so the lean engine sees the pool as one op (its rule keeps its input).
torch.fx.wrap("l2_pool2d")


class L2Pool2d(nn.Module):
    """DISTS's L2 pooling as a module without parameters or buffers (torchvision's keys still load)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_pool2d(x)


def build(name: str, pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``({"features": Sequential}, stages)`` for ``name`` in :data:`NAMES`.

    ``pooling="avg"`` uses 2x2 average pools instead of max-pools (the perceptual-gradient-network
    paper's VGG-19), ``"l2"`` DISTS's L2 pooling; the indices, and so the state-dict keys, do not change.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    pools = {"max": lambda: nn.MaxPool2d(2, 2), "avg": lambda: nn.AvgPool2d(2, 2), "l2": L2Pool2d}
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
            add(pools[pooling](), f"pool{block}")
            block, conv = block + 1, 1
        else:
            add(nn.Conv2d(in_channels, item, 3, padding=1), f"conv{block}_{conv}")
            if batch_norm:
                add(nn.BatchNorm2d(item), None)
            add(nn.ReLU(inplace=False), f"relu{block}_{conv}")
            in_channels, conv = item, conv + 1
    return OrderedDict(features=nn.Sequential(*layers)), stages
