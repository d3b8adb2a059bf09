"""TVLoss: total-variation regulariser on images."""
import torch
from torch import nn

from perfloss.inputs import REDUCTIONS
from perfloss.ops.tv_loss import KINDS, tv_loss


class TVLoss(nn.Module):
    """Total variation: mean |dx| + mean |dy| (``kind="l1"``) or mean dx^2 + mean dy^2 (``"l2"``) per sample."""

    def __init__(self, kind: str = "l1", reduction: str = "mean"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.kind, self.reduction = kind, reduction

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return tv_loss(input, self.kind, self.reduction)
