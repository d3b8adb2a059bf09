"""torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` backed by :class:`perfloss.LPIPS` (needs
torchmetrics: ``pip install torchmetrics``).

Same constructor (``net_type``, ``reduction``, ``normalize``, Metric keywords), ``update`` /
``compute`` / ``reset`` / ``forward``, the same input check (shape and value range, which reads the
values, as there). States: for ``reduction`` ``"mean"`` / ``"sum"`` the running sum of scores and
their count (summed across processes under DDP), for ``"none"`` the scores themselves (concatenated),
so a distributed ``compute`` gives the whole data set's value.

Differences: scores come from the lean engine; the unit normalisation's epsilon is 1e-10 inside the
square root (torchmetrics: 1e-8), a relative difference below 1e-7 for features of norm above 0.3.
"""
from typing import Any, Optional

import torch

from perfloss.losses.lpips import LPIPS

try:
    from torchmetrics import Metric
    from torchmetrics.utilities.data import dim_zero_cat
except ImportError as e:  # pragma: no cover - exercised only without torchmetrics
    raise ImportError("perfloss.compat.torchmetrics needs torchmetrics: pip install torchmetrics") from e

NET_TYPES = ("vgg", "alex", "squeeze")
REDUCTIONS = ("mean", "sum", "none", None)


class LearnedPerceptualImagePatchSimilarity(Metric):
    """LPIPS as a torchmetrics Metric. perfloss keywords: ``weights`` (the backbone's, default
    ``"imagenet"``), ``lin_weights`` (default: the lpips wheel's file; torchmetrics ships the same
    numbers), ``engine``, ``chunk_size``."""

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, net_type="alex", reduction: Optional[str] = "mean", normalize: bool = False, *,
                 weights="imagenet", lin_weights=None, engine=None, chunk_size=None, **kwargs: Any):
        super().__init__(**kwargs)
        if net_type not in NET_TYPES:
            raise ValueError(f"Argument `net_type` must be one of {NET_TYPES}, but got {net_type}.")
        if reduction not in REDUCTIONS:
            raise ValueError(f"Argument `reduction` must be one of {REDUCTIONS}, but got {reduction}")
        if not isinstance(normalize, bool):
            raise ValueError(f"Argument `normalize` should be an bool but got {normalize}")
        self.net = LPIPS(net=net_type, weights=weights, lin_weights=lin_weights, normalize=normalize,
                         reduction="none", engine=engine, chunk_size=chunk_size)
        self.reduction, self.normalize = reduction, normalize
        if reduction in ("mean", "sum"):
            self.add_state("sum_scores", torch.tensor(0.0), dist_reduce_fx="sum")
            self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")
        else:
            self.add_state("all_scores", [], dist_reduce_fx="cat")

    def _check(self, img: torch.Tensor) -> None:
        lo, hi = (0.0, 1.0) if self.normalize else (-1.0, 1.0)
        in_range = bool(img.min() >= lo) and (not self.normalize or bool(img.max() <= hi))
        if img.ndim != 4 or img.shape[1] != 3 or not in_range:
            raise ValueError(f"Expected both input arguments to be normalized tensors with shape [N, 3, H, W] and "
                             f"values in the {[lo, hi]} range, got shape {tuple(img.shape)}")

    def update(self, img1: torch.Tensor, img2: torch.Tensor) -> None:
        """Add the scores of a batch of image pairs."""
        self._check(img1)
        self._check(img2)
        scores = self.net(img1, img2)
        if self.reduction in ("mean", "sum"):
            self.sum_scores = self.sum_scores + scores.sum()
            self.total = self.total + scores.numel()
        else:
            self.all_scores.append(scores.squeeze())

    def compute(self) -> torch.Tensor:
        """The scores' mean, sum, or the scores themselves (``reduction`` ``"none"`` / None)."""
        if self.reduction == "mean":
            return self.sum_scores / self.total
        if self.reduction == "sum":
            return self.sum_scores
        return dim_zero_cat(self.all_scores)
