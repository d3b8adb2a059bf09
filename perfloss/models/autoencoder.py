"""ConvAutoencoder: a small convolutional autoencoder whose code is a vector, for dimensionality reduction."""
import torch
from torch import nn

from perfloss.models.blocks import ConvNormReLU, PaddedConv, UpsampleConvNormReLU, batch_norm, check_image_batch, \
    to_unit_range


class ConvAutoencoder(nn.Module):
    """Encoder: ``depth`` stride-2 3x3 ConvNormReLU stages (``channels``, doubling per stage), flattened, a
    linear map to the ``code_size`` code. Decoder, the mirror: a linear map and ReLU back to the last
    stage's feature map, ``depth`` upsampling stages (nearest x2, 3x3 ConvNormReLU) halving the channels
    down to ``channels``, a 3x3 conv to RGB and the scaled tanh to [0, 1].

    The kind of autoencoder Pihlgren et al. (2023) train with each loss network before judging its codes
    by a classifier. BatchNorm and reflection padding as in perfloss's other generators (blocks.py).

    Input: (B, 3, image_size, image_size) images in [0, 1], ``image_size`` a multiple of 2 ** depth.
    ``encode(x)`` -> (B, code_size); ``decode(code)`` -> images; ``forward(x)`` = decode(encode(x)).
    """

    def __init__(self, image_size: int = 32, code_size: int = 128, channels: int = 32, depth: int = 3):
        super().__init__()
        for name, value in (("image_size", image_size), ("code_size", code_size), ("channels", channels),
                            ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if image_size % 2 ** depth or image_size // 2 ** depth < 2:
            raise ValueError(f"image_size must be a multiple of 2 ** depth = {2 ** depth} and at least "
                             f"{2 ** (depth + 1)} (depth {depth}), got {image_size}")
        self.image_size = image_size
        widths = [channels * 2 ** k for k in range(depth)]  # each encoder stage's output channels
        self.bottom = (widths[-1], image_size // 2 ** depth, image_size // 2 ** depth)
        flat = widths[-1] * self.bottom[1] * self.bottom[2]
        self.encoder = nn.Sequential(*[ConvNormReLU(c_in, c_out, 3, batch_norm, stride=2)
                                       for c_in, c_out in zip([3] + widths[:-1], widths)])
        self.to_code = nn.Linear(flat, code_size)
        self.from_code = nn.Sequential(nn.Linear(code_size, flat), nn.ReLU())
        decoder_out = widths[-2::-1] + [channels]  # halving back down to `channels`
        self.decoder = nn.Sequential(*[UpsampleConvNormReLU(c_in, c_out, batch_norm)
                                       for c_in, c_out in zip(widths[::-1], decoder_out)])
        self.to_rgb = PaddedConv(channels, 3, 3)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, min_side=self.image_size)
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"input must be {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}")
        return self.to_code(self.encoder(x).flatten(1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        y = self.from_code(code).view(-1, *self.bottom)
        return to_unit_range(self.to_rgb(self.decoder(y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
