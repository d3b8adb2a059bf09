"""TransformNet: Johnson et al.'s image transformation network for fast style transfer."""
import torch
from torch import nn

from perfloss.models.blocks import (NORMS, ConvNormReLU, PaddedConv, ResidualBlock, UpsampleConvNormReLU,
                                    check_image_batch, to_unit_range)


class TransformNet(nn.Module):
    """c9s1-32, d64, d128, 5 residual blocks at 128, u64, u32, c9s1-3 (Johnson, Alahi, Fei-Fei 2016).

    ``base_channels`` (32) and ``residual_blocks`` (5) are the paper's; the widths double at each
    downsampling. Differences from the paper, all common practice since:

    - ``norm="instance"`` (default): InstanceNorm2d(affine=True) in place of the paper's BatchNorm
      (Ulyanov et al.'s later, standard variant: each image is stylised on its own, independent of
      its batch); ``norm="batch"``: the paper's BatchNorm2d. Either is followed by ReLU, after every
      conv but the last;
    - reflection padding everywhere, and padded residual blocks (the paper cropped unpadded ones);
    - the two upsampling stages are nearest-neighbour x2 followed by a 3x3 conv instead of
      stride-1/2 convs, which avoids checkerboard artefacts;
    - output in [0, 1] by a scaled tanh, (tanh(x) + 1) / 2, the range perfloss's losses take by
      default (the paper scaled tanh to [0, 255]).

    Input: (B, 3, H, W) images, H and W at least 5 (any size: the decoder returns to H x W).
    Output: the same shape, in [0, 1]. 1,679,235 parameters with the defaults (either norm: both
    have a scale and a shift per channel).
    """

    def __init__(self, base_channels: int = 32, residual_blocks: int = 5, norm: str = "instance"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {norm!r}")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels must be a positive int, got {base_channels!r}")
        if not isinstance(residual_blocks, int) or residual_blocks < 0:
            raise ValueError(f"residual_blocks must be a non-negative int, got {residual_blocks!r}")
        c, make_norm = base_channels, NORMS[norm]
        self.c9s1 = ConvNormReLU(3, c, 9, make_norm)
        self.d2 = ConvNormReLU(c, 2 * c, 3, make_norm, stride=2)
        self.d4 = ConvNormReLU(2 * c, 4 * c, 3, make_norm, stride=2)
        self.residual = nn.Sequential(*[ResidualBlock(4 * c, make_norm) for _ in range(residual_blocks)])
        self.u2 = UpsampleConvNormReLU(4 * c, 2 * c, make_norm)
        self.u1 = UpsampleConvNormReLU(2 * c, c, make_norm)
        self.to_rgb = PaddedConv(c, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, min_side=5)  # the 9x9 reflection padding needs a side of at least 5
        full = self.c9s1(x)
        half = self.d2(full)
        y = self.residual(self.d4(half))
        y = self.u2(y, size=half.shape[-2:])
        y = self.u1(y, size=full.shape[-2:])
        return to_unit_range(self.to_rgb(y))
