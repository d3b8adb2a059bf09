"""visualize: a grid of what a perceptual loss asks for (Nikulin et al. read PGNs this way).

One row per image, labelled columns: generated y_hat | target y | proxy p (the PGN's) | predicted
gradient | true gradient. Images are mapped from ``input_range`` to [0, 1] and clipped. Gradients are
shown as signed RGB maps, 0.5 - 0.5 * g / m per channel (grey = zero; brighter = the loss wants the
pixel brighter, i.e. a descent step -g), with one scale m per row shared by the predicted and true
gradient (the 99th percentile of |g| over both), so their magnitudes compare directly. Drawn with
matplotlib (``pip install perfloss[plot]``).
"""
from typing import Optional

import torch

from .. import plots


def _to01(img: torch.Tensor, input_range) -> torch.Tensor:
    lo, hi = input_range
    return ((img.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)


def visualize(y_hat: torch.Tensor, y: torch.Tensor, proxy: torch.Tensor, g_pred: torch.Tensor,
              g_true: Optional[torch.Tensor], path, *, input_range=(0.0, 1.0), max_images: int = 8,
              title: Optional[str] = None) -> str:
    """Write the grid to ``path`` (format from the suffix, e.g. .png) and return the path. ``g_true``
    may be None: the true-gradient column is then left out."""
    tensors = {"y_hat": y_hat, "y": y, "proxy": proxy, "g_pred": g_pred}
    if g_true is not None:
        tensors["g_true"] = g_true
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, 3, H, W), got {shape}")
        if t.shape != y_hat.shape:
            raise ValueError(f"{name} must have the shape of y_hat {tuple(y_hat.shape)}, got {tuple(t.shape)}")
    n = min(y_hat.shape[0], max_images)
    columns = {"generated": _to01(y_hat[:n], input_range), "target": _to01(y[:n], input_range),
               "proxy": _to01(proxy[:n], input_range)}
    gp = g_pred[:n].detach().float().cpu()
    gt = g_true[:n].detach().float().cpu() if g_true is not None else torch.zeros_like(gp)
    both = torch.cat([gp.flatten(1), gt.flatten(1)], dim=1).abs()
    scale = torch.quantile(both, 0.99, dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
    columns["predicted gradient"] = (0.5 - 0.5 * gp / scale).clamp(0, 1)
    if g_true is not None:
        columns["true gradient"] = (0.5 - 0.5 * gt / scale).clamp(0, 1)
    plots.image_grid(path, columns, title=title)
    return str(path)
