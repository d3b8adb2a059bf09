"""MultiScaleLoss: one loss applied at several image scales (MSG-GAN-style deep supervision)."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Area (box-filter) resampling: averages when shrinking, so no aliasing for integer factors."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="area")


class MultiScaleLoss(nn.Module):
    """sum over scales of scale_weight * loss(input at scale, target at scale).

    ``forward(input, target)`` with one image batch resamples both to each of ``scales`` (fractions
    of the full size, area resampling). ``forward([out_1, ..., out_k], target)`` takes a generator's
    outputs at several resolutions and compares each with the target resampled to its size; then
    ``scale_weights`` (if given) has one weight per output.
    """

    def __init__(self, loss: nn.Module, scales: Sequence[float] = (1, 0.5, 0.25),
                 scale_weights: Optional[Sequence[float]] = None):
        super().__init__()
        scales = [float(s) for s in scales]
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be fractions in (0, 1], got {scales}")
        self.loss = loss
        self.scales = scales
        self.scale_weights = None if scale_weights is None else [float(w) for w in scale_weights]

    def _weights(self, count: int):
        if self.scale_weights is None:
            return [1.0] * count
        if len(self.scale_weights) != count:
            raise ValueError(f"scale_weights has {len(self.scale_weights)} entries for {count} scales/outputs")
        return self.scale_weights

    def forward(self, input, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, (list, tuple)):
            if not input:
                raise ValueError("input must hold at least one output")
            pairs = [(out, resize(target, out.shape[-2:])) for out in input]
        else:
            h, w = input.shape[-2:]
            sizes = [(max(1, int(h * s)), max(1, int(w * s))) for s in self.scales]
            pairs = [(resize(input, size), resize(target, size)) for size in sizes]
        return sum(w * self.loss(x, t) for w, (x, t) in zip(self._weights(len(pairs)), pairs))
