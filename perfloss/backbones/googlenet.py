"""GoogLeNet (Inception v1, torchvision's layout and its ImageNet weights' ``transform_input``).

Taps: ``conv1``, ``conv2``, ``conv3`` (each conv-BN-ReLU's output), ``inception3a``..``inception5b`` (each
Inception module's concatenated branches). The auxiliary classifiers (``aux1``, ``aux2``) and ``fc`` are
not built; their keys in torchvision's file are ignored.

Also defined here, shared with Inception-v3: :class:`BasicConv2d` (conv without bias, BN with eps 1e-3,
ReLU) and :class:`TransformInput`, the per-channel affine torchvision applies first when these networks
carry their ImageNet weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from torch import nn

from .base import Stage

NAMES = ["googlenet"]
HEAD_PREFIXES = ("aux1.", "aux2.", "fc.")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransformInput(nn.Module):
    """ImageNet-normalised input -> the (x - 0.5) / 0.5 normalisation the TensorFlow-ported weights
    expect: ``x * (std / 0.5) + (mean - 0.5) / 0.5`` per channel (torchvision's ``transform_input``).

    ``x * scale + shift`` with constant buffers is a lean ``scale`` step and an ``add`` step. The buffers
    are not in ``state_dict()`` (torchvision's files do not have them): :meth:`reset_buffers` writes
    them, :func:`perfloss.backbones.get_backbone` calls it after loading the weights, and every
    ``.to(dtype)`` / ``.double()`` rewrites them from the float64 constants so they are exact in any dtype.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.empty(1, 3, 1, 1), persistent=False)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        if self.scale.is_meta:  # shapes only
            return
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
        self.scale.copy_(std / 0.5)
        self.shift.copy_((mean - 0.5) / 0.5)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.reset_buffers()  # a dtype change would otherwise keep float32-rounded constants
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class BasicConv2d(nn.Module):
    """Conv (no bias), BatchNorm (eps 1e-3), ReLU: torchvision's ``conv``/``bn`` keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | 3x3 max-pool -> 1x1, concatenated over channels.

    The third branch's second conv is 3x3, not the paper's 5x5: torchvision's port (and its weights)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# (name, in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection), with the max-pools between.
_INCEPTIONS = [
    ("inception3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    "maxpool3",
    ("inception4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    "maxpool4",
    ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
]


def build(name: str = "googlenet", pooling: str = "max") -> Tuple[Dict[str, nn.Module], List[Stage]]:
    """``(children, stages)`` with torchvision's attribute names (conv1, maxpool1, ..., inception5b)."""
    children: Dict[str, nn.Module] = OrderedDict(
        transform_input=TransformInput(),
        conv1=BasicConv2d(3, 64, 7, stride=2, padding=3),
        maxpool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        conv2=BasicConv2d(64, 64, 1),
        conv3=BasicConv2d(64, 192, 3, padding=1),
        maxpool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),
    )
    for item in _INCEPTIONS:
        if isinstance(item, str):  # maxpool3 is 3x3, maxpool4 2x2, both stride 2 and ceil mode
            children[item] = nn.MaxPool2d(3 if item == "maxpool3" else 2, stride=2, ceil_mode=True)
        else:
            children[item[0]] = Inception(*item[1:])
    stages = [(key, None if key.startswith(("maxpool", "transform")) else key) for key in children]
    return children, stages
