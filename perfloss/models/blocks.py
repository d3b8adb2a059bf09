"""Layers the generators share: padded convolutions, residual blocks, upsampling and the output map.

Every convolution is reflection-padded to keep the spatial size (stride 1) or halve it (stride 2):
zero padding darkens the borders of generated images, reflection does not.
"""
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

NormFactory = Callable[[int], nn.Module]


def instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


def batch_norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


NORMS = {"instance": instance_norm, "batch": batch_norm}


def check_image_batch(x: torch.Tensor, min_side: int) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"input must be an image batch shaped (B, 3, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_side:
        raise ValueError(f"input height and width must be at least {min_side}, got {tuple(x.shape[-2:])}")


class PaddedConv(nn.Sequential):
    """Reflection padding then a k x k convolution with ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(nn.ReflectionPad2d(kernel_size // 2),
                         nn.Conv2d(in_channels, out_channels, kernel_size, stride))


class ConvNormReLU(nn.Sequential):
    """PaddedConv, normalisation, ReLU: the network's non-residual layers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: NormFactory, stride: int = 1):
        super().__init__(PaddedConv(in_channels, out_channels, kernel_size, stride), norm(out_channels), nn.ReLU())


class ResidualBlock(nn.Module):
    """x + (conv3x3, norm, ReLU, conv3x3, norm)(x), no ReLU after the sum (Johnson et al.'s block,
    padded so the sum needs no cropping)."""

    def __init__(self, channels: int, norm: NormFactory):
        super().__init__()
        self.body = nn.Sequential(ConvNormReLU(channels, channels, 3, norm),
                                  PaddedConv(channels, channels, 3), norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConvNormReLU(nn.Module):
    """Nearest-neighbour upsampling then ConvNormReLU, in place of a stride-1/2 (transposed) conv.

    A transposed convolution whose kernel size is not a multiple of its stride overlaps unevenly and
    paints checkerboard artefacts; resizing first and convolving after does not (Odena et al. 2016).
    ``forward(x, size)`` upsamples to ``size`` (default: twice x's), so a decoder can return exactly
    to the size of the matching encoder stage even where a stride-2 conv rounded an odd side up.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory):
        super().__init__()
        self.conv = ConvNormReLU(in_channels, out_channels, 3, norm)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """(tanh(x) + 1) / 2: the paper's scaled tanh, mapped to the [0, 1] images perfloss's losses take.

    Equal to sigmoid(2x); unlike a clamp it passes gradient everywhere.
    """
    return (torch.tanh(x) + 1) / 2
