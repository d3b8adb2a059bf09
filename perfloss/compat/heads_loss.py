"""HeadsLoss: any set of perfloss heads on one backbone, behind a peer's own input mapping.

The peers normalise inputs their own way (BasicSR: optional [-1, 1] -> [0, 1] and optional ImageNet
statistics; piq: any mean and std); this loss takes that map as the affine ``x * scale + shift``
(:func:`perfloss.inputs.pixel_affine`) and otherwise is perfloss's BackboneLoss: lean engine where the network allows, per-sample values.
"""
from typing import Optional, Sequence

import torch

from perfloss.heads import TapHead
from perfloss.inputs import check_pair
from perfloss.losses.base import BackboneLoss


class HeadsLoss(BackboneLoss):
    """Per-sample sum of ``heads`` between input and target images, reduced; the target is detached
    unless ``detach_target=False``."""

    def __init__(self, backbone, heads: Sequence[TapHead], *, affine, input_range=(0.0, 1.0), reduction="mean",
                 engine: Optional[str] = None, chunk_size: Optional[int] = None, detach_target: bool = True):
        super().__init__(backbone, heads, input_range=input_range, reduction=reduction, engine=engine,
                         check_range=False, chunk_size=chunk_size, affine=affine)
        self.detach_target = detach_target

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_pair(input, target)
        if self.detach_target:
            target = target.detach()
        x, t = self.checked_images("input", input), self.checked_images("target", target)
        return self.reduce(self.per_sample(x, target_x=t))
