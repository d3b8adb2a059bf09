"""A linear classifier on frozen codes (a "linear probe"): how much of the class an encoder's codes keep.

Multinomial logistic regression on standardised codes: minimise the mean cross-entropy plus
``l2 / 2 * ||W||^2`` (the bias unpenalised) with full-batch L-BFGS in float64. The objective is
strictly convex, so the fit depends on the data alone, not on an initialisation or a batch order.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F


class LinearProbe(NamedTuple):
    mean: torch.Tensor  # (D,) the training codes' mean and standard deviation
    std: torch.Tensor
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        return ((codes.double() - self.mean) / self.std) @ self.weight.T + self.bias

    def accuracy(self, codes: torch.Tensor, labels: torch.Tensor) -> float:
        return (self.logits(codes).argmax(1) == labels.to(codes.device)).double().mean().item()


def fit_linear_probe(codes: torch.Tensor, labels: torch.Tensor, classes: int, l2: float = 1e-3,
                     max_iter: int = 500) -> LinearProbe:
    """Fit a :class:`LinearProbe` to (N, D) ``codes`` and (N,) integer ``labels`` in [0, classes)."""
    if codes.dim() != 2 or labels.shape != codes.shape[:1]:
        raise ValueError(f"codes must be (N, D) and labels (N,), got {tuple(codes.shape)} and {tuple(labels.shape)}")
    x = codes.detach().double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)  # a constant code dimension: weight 0
    x = (x - mean) / std
    labels = labels.to(x.device)
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  history_size=20, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return LinearProbe(mean, std, weight.detach(), bias.detach())
