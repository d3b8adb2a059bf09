"""Functional forms of perfloss's losses on feature maps and images, mirroring torch.nn.functional.

Each takes feature maps or images (B, C, H, W) and a ``reduction`` ("mean" | "sum" | "none" per
sample) and runs on the fused ``perfloss::`` ops, whose backward keeps only the gradient.
"""
from typing import Optional, Sequence

import torch

from perfloss.inputs import reduce
from perfloss.ops.feature_distance import feature_distance
from perfloss.ops.gram import gram
from perfloss.ops.style_loss import style_loss
from perfloss.ops.tv_loss import tv_loss
from perfloss.pgn.proxy import proxy_regression, proxy_target


def lpips_distance(features0: Sequence[torch.Tensor], features1: Sequence[torch.Tensor],
                   lin_weights: Optional[Sequence[Optional[torch.Tensor]]] = None,
                   reduction: str = "mean") -> torch.Tensor:
    """LPIPS distance from already computed per-layer features: the sum over layers of the
    channel-unit-normalised, per-channel weighted squared distance, averaged over pixels."""
    if len(features0) != len(features1) or not features0:
        raise ValueError(f"features0 and features1 must be equally long, non-empty sequences, "
                         f"got {len(features0)} and {len(features1)}")
    if lin_weights is None:
        lin_weights = [None] * len(features0)
    if len(lin_weights) != len(features0):
        raise ValueError(f"lin_weights must have one entry per layer ({len(features0)}), got {len(lin_weights)}")
    values = sum(feature_distance(f0, f1, "lpips", w, reduction="none")
                 for f0, f1, w in zip(features0, features1, lin_weights))
    return reduce(values, reduction)


__all__ = ["feature_distance", "gram", "lpips_distance", "proxy_regression", "proxy_target", "style_loss", "tv_loss"]
