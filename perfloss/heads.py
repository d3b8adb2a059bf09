"""Loss heads: the per-tap terms a perceptual loss adds up.

A head compares the input's features at one tap with a target representation (the target's
features, or its Gram matrix for style) and gives per-sample values. Both engines use heads:
the eager engine differentiates ``values`` through autograd; the lean engine calls
``values_and_grad`` in its forward pass and keeps only the returned gradient for that tap.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from perfloss.ops.feature_distance import feature_distance, feature_distance_values
from perfloss.ops.gram import gram
from perfloss.ops.style_loss import style_loss, style_loss_values

KINDS = ("mse", "l1", "cosine", "lpips", "gram")


class TapHead(nn.Module):
    """``weight`` times the ``kind`` distance at ``tap``; ``lin`` holds an LPIPS head's per-channel weights (C,).

    A module so that ``lin`` is a buffer that follows ``.to(device)`` with the loss that owns the head.
    """

    def __init__(self, tap: str, kind: str, weight: float = 1.0, lin: Optional[torch.Tensor] = None):
        super().__init__()
        if kind not in KINDS and type(self) is TapHead:  # a subclass brings its own kind and distance
            raise ValueError(f"head kind must be one of {KINDS}, got {kind!r}")
        self.tap, self.kind, self.weight = tap, kind, float(weight)
        self.register_buffer("lin", None if lin is None else lin.detach().reshape(-1).clone())

    def extra_repr(self) -> str:
        return f"tap={self.tap!r}, kind={self.kind!r}, weight={self.weight:g}"

    @property
    def grad_is_sign(self) -> bool:
        """True when the gradient is weight / (C H W) * sign(f - target): 2 bits per element suffice."""
        return self.kind == "l1"

    def prepare_target(self, features: torch.Tensor) -> torch.Tensor:
        """What the head compares against, computed once from the target's features."""
        return gram(features) if self.kind == "gram" else features

    def values(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """weight * per-sample values (B,), differentiable through autograd."""
        if self.kind == "gram":
            v = style_loss(features, target, reduction="none")
        else:
            target = target.to(features.dtype)
            v = feature_distance(features, target, self.kind, self.lin, reduction="none")
        return v * self.weight

    def values_and_grad(self, features: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """weight * per-sample values and d(sum of them)/d features, without an autograd graph."""
        with torch.no_grad():
            if self.kind == "gram":
                v, g = style_loss_values(features, target, compute_grad=True)
            else:
                target = target.to(features.dtype)
                v, g = feature_distance_values(features, target, self.kind, self.lin, compute_grad=True)
            return v * self.weight, g * self.weight if self.weight != 1.0 else g
