"""Bodies of the perceptual gradient networks: 6 input channels -> 3 output channels, same size.

ResNet-N (Nikulin et al. 2021): 3x3 conv 6->64, 3x3 stride-2 conv 64->128, N residual blocks at 128
channels, nearest upsample + 3x3 conv 128->64, 3x3 conv 64->3 (with bias). Every other conv is
bias-free and followed by BatchNorm and LeakyReLU(0.2); a residual block is
conv-BN-LReLU-conv-BN, added to its input, then LReLU. Parameter counts (3x3 kernels):
1,334,851 / 1,925,699 / 2,516,547 for N = 4 / 6 / 8 (the paper: about 1.3M / 1.9M / 2.5M).

UNet (perfloss's own small design, the paper does not fix one): three scales of 32, 64, 128 channels
and a 256-channel bottleneck at 1/8 resolution. Each level is two conv-BN-LReLU layers; going down is a
2x2 average pool, going up is nearest upsampling + conv-BN-LReLU to the level's width, concatenated
with the skip and followed by the level's two convs; a final 3x3 conv (with bias) gives 3 channels.
2,143,971 parameters.

All convolutions sit in :class:`ConvBNAct` units so that inference can fold BatchNorm into them.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU_SLOPE = 0.2


class ConvBNAct(nn.Module):
    """3x3 (or k x k) conv without bias, BatchNorm, optional LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.LeakyReLU(LRELU_SLOPE) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(channels, channels), ConvBNAct(channels, channels, act=False))
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x):
        return self.act(x + self.body(x))


class Upsample(nn.Module):
    """Nearest upsampling to the size of a reference tensor (exact for odd sizes too)."""

    def forward(self, x, size):
        return F.interpolate(x, size=size, mode="nearest")


class ResNetPGN(nn.Module):
    def __init__(self, blocks: int, in_channels: int = 6, out_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = ConvBNAct(in_channels, width)
        self.down = ConvBNAct(width, 2 * width, stride=2)
        self.blocks = nn.Sequential(*[ResidualBlock(2 * width) for _ in range(blocks)])
        self.up = Upsample()
        self.up_conv = ConvBNAct(2 * width, width)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x):
        size = x.shape[-2:]
        h = self.blocks(self.down(self.stem(x)))
        return self.out(self.up_conv(self.up(h, size)))


class UNetPGN(nn.Module):
    def __init__(self, in_channels: int = 6, out_channels: int = 3, widths=(32, 64, 128), bottleneck: int = 256):
        super().__init__()
        self.enc = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.enc.append(nn.Sequential(ConvBNAct(cin, w), ConvBNAct(w, w)))
            cin = w
        self.pool = nn.AvgPool2d(2)
        self.mid = nn.Sequential(ConvBNAct(cin, bottleneck), ConvBNAct(bottleneck, bottleneck))
        self.up = Upsample()
        self.up_convs = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = bottleneck
        for w in reversed(widths):
            self.up_convs.append(ConvBNAct(cin, w))
            self.dec.append(nn.Sequential(ConvBNAct(2 * w, w), ConvBNAct(w, w)))
            cin = w
        self.out = nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, x):
        skips: List[torch.Tensor] = []
        h = x
        for level in self.enc:
            h = level(h)
            skips.append(h)
            h = self.pool(h)
        h = self.mid(h)
        for up_conv, dec, skip in zip(self.up_convs, self.dec, reversed(skips)):
            h = up_conv(self.up(h, skip.shape[-2:]))
            h = dec(torch.cat([h, skip], dim=1))
        return self.out(h)


ARCHS = ("resnet4", "resnet6", "resnet8", "unet")


def build_body(arch: str) -> nn.Module:
    if arch == "unet":
        return UNetPGN()
    if arch in ("resnet4", "resnet6", "resnet8"):
        return ResNetPGN(int(arch[len("resnet"):]))
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
