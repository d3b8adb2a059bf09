"""Small autoencoder generators: the online image sources a PGN is trained on, and test generators.

``AutoencoderGenerator(depth)`` maps a target image y to a reconstruction y_hat in the image range.
depth 0: three 3x3 convs at full resolution; depth d > 0: d stride-2 convs down (doubling the width),
then d nearest-upsample + conv stages back up, no skip connections (the bottleneck makes early
reconstructions blurry and artefact-laden, which is the variety of y_hat a PGN must see). A sigmoid
puts the output in ``output_range``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class AutoencoderGenerator(nn.Module):
    def __init__(self, depth: int = 1, width: int = 32, output_range=(0.0, 1.0)):
        super().__init__()
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a non-negative int, got {depth!r}")
        self.depth, self.width = depth, width
        self.lo, self.hi = (float(v) for v in output_range)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        w = width
        for _ in range(depth):
            self.downs.append(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1))
            w *= 2
        for _ in range(depth):
            self.ups.append(nn.Conv2d(w, w // 2, 3, padding=1))
            w //= 2
        self.mid = nn.Conv2d(w, w, 3, padding=1)
        self.out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, y):
        x = (y - self.lo) / (self.hi - self.lo) * 2 - 1
        h = F.leaky_relu(self.stem(x), 0.2)
        sizes = []
        for down in self.downs:
            sizes.append(h.shape[-2:])
            h = F.leaky_relu(down(h), 0.2)
        for up, size in zip(self.ups, reversed(sizes)):
            h = F.leaky_relu(up(F.interpolate(h, size=size, mode="nearest")), 0.2)
        h = F.leaky_relu(self.mid(h), 0.2)
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.out(h))
