"""perfloss: cheap perceptual losses for PyTorch.

Losses take ``(input, target)`` like torch.nn losses, images in an explicit ``input_range``
(default (0, 1); LPIPS (-1, 1) as the lpips package), and ``reduction`` "mean" | "sum" | "none".
"""
from perfloss import backbones, engine, functional, pgn
from perfloss.losses import DISTS, LPIPS, JohnsonLoss, MultiScaleLoss, PerceptualLoss, StyleLoss, TVLoss
from perfloss.ops.library import backend_info

__version__ = "0.1.0"

__all__ = [
    "DISTS", "JohnsonLoss", "LPIPS", "MultiScaleLoss", "PerceptualLoss", "StyleLoss", "TVLoss",
    "backbones", "backend_info", "engine", "functional", "pgn",
]
