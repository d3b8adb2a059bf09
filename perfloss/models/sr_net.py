"""SuperResolutionNet: Johnson et al.'s single-image super-resolution network."""
import math

import torch
from torch import nn

from perfloss.models.blocks import (ConvNormReLU, PaddedConv, ResidualBlock, UpsampleConvNormReLU, batch_norm,
                                    check_image_batch, to_unit_range)

FACTORS = (2, 4, 8)


class SuperResolutionNet(nn.Module):
    """9x9 conv to 64, 4 residual blocks at 64, log2(factor) x2 upsampling stages, 9x9 conv to 3
    (Johnson, Alahi, Fei-Fei 2016, trained there for factors 4 and 8).

    - Each upsampling stage is nearest-neighbour x2 followed by a 3x3 conv at 64 channels (the paper
      used stride-1/2 convs; resizing then convolving avoids their checkerboard artefacts, and costs
      no more than a sub-pixel conv's 4x wider layer).
    - BatchNorm + ReLU after every conv but the last, as in the paper. Not InstanceNorm: it would
      discard each image's mean and contrast, which a super-resolved image must keep.
    - Reflection padding everywhere; padded residual blocks.
    - Output in [0, 1] by a scaled tanh, (tanh(x) + 1) / 2, like TransformNet.

    Input: (B, 3, h, w) low-resolution images, h and w at least 5. Output: (B, 3, factor h, factor w)
    in [0, 1]. Parameters: 364,803 (factor 2), 401,859 (4), 438,915 (8).
    """

    def __init__(self, factor: int = 4, channels: int = 64, residual_blocks: int = 4):
        super().__init__()
        if factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(residual_blocks, int) or residual_blocks < 0:
            raise ValueError(f"residual_blocks must be a non-negative int, got {residual_blocks!r}")
        self.factor = factor
        self.stem = ConvNormReLU(3, channels, 9, batch_norm)
        self.residual = nn.Sequential(*[ResidualBlock(channels, batch_norm) for _ in range(residual_blocks)])
        self.upsample = nn.Sequential(*[UpsampleConvNormReLU(channels, channels, batch_norm)
                                        for _ in range(int(math.log2(factor)))])
        self.to_rgb = PaddedConv(channels, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, min_side=5)  # the 9x9 reflection padding needs a side of at least 5
        return to_unit_range(self.to_rgb(self.upsample(self.residual(self.stem(x)))))
