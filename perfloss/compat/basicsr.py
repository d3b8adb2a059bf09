"""BasicSR's ``PerceptualLoss`` (basicsr/losses/basic_loss.py, BasicSR 1.4) backed by perfloss.

``PerceptualLoss(layer_weights, vgg_type='vgg19', use_input_norm=True, range_norm=False,
perceptual_weight=1.0, style_weight=0., criterion='l1')``; ``forward(x, gt)`` returns
``(percep_loss, style_loss)``, each ``None`` where its weight is 0, the target detached as there.
Layer names are BasicSR's and perfloss's alike: ``conv{b}_{i}`` (pre-ReLU, as ESRGAN's ``conv5_4``),
``relu{b}_{i}``, ``pool{b}``.

Differences: ``criterion='l2'`` is the mean squared error BasicSR means (its 1.4.2 source calls
``torch.nn.L2loss``, which does not exist); ``'fro'`` (one Frobenius norm over the whole batch) and a
style term with ``'l1'`` (L1 between Gram matrices) are not supported and raise. With both weights
non-zero the network runs twice (once per term).
"""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from perfloss.backbones import get_backbone, vgg
from perfloss.compat.heads_loss import HeadsLoss
from perfloss.heads import TapHead
from perfloss.inputs import IMAGENET_MEAN, IMAGENET_STD, pixel_affine

CRITERIA = {"l1": "l1", "l2": "mse"}


class PerceptualLoss(nn.Module):
    """BasicSR's perceptual (and style) loss. perfloss keywords: ``weights`` (the VGG's, default
    ``"imagenet"``), ``engine``, ``chunk_size``."""

    def __init__(self, layer_weights: Dict[str, float], vgg_type="vgg19", use_input_norm=True, range_norm=False,
                 perceptual_weight=1.0, style_weight=0., criterion="l1", *, weights="imagenet", engine=None,
                 chunk_size=None):
        super().__init__()
        if criterion == "fro":
            raise ValueError("criterion='fro' (one Frobenius norm over the whole batch) is not supported by "
                             "perfloss.compat.basicsr; use 'l1' or 'l2'")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be 'l1' or 'l2' ('fro' is not supported), got {criterion!r}")
        if style_weight > 0 and criterion == "l1":
            raise ValueError("style_weight > 0 with criterion='l1' (L1 between Gram matrices) is not supported by "
                             "perfloss.compat.basicsr; use criterion='l2' for a style term")
        if not isinstance(layer_weights, dict) or not layer_weights:
            raise ValueError(f"layer_weights must be a non-empty dict of layer name -> weight, got {layer_weights!r}")
        if vgg_type not in vgg.NAMES:
            raise ValueError(f"vgg_type must be one of {vgg.NAMES}, got {vgg_type!r}")
        self.perceptual_weight, self.style_weight = perceptual_weight, style_weight
        self.layer_weights = dict(layer_weights)
        layers = list(layer_weights)
        backbone = get_backbone(vgg_type, taps=layers, weights=weights)
        lo, hi = (-1.0, 1.0) if range_norm else (0.0, 1.0)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if use_input_norm else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        common = dict(affine=pixel_affine((lo, hi), mean, std), input_range=(lo, hi), reduction="mean", engine=engine,
                      chunk_size=chunk_size)
        self.percep: Optional[HeadsLoss] = None
        self.style: Optional[HeadsLoss] = None
        if perceptual_weight > 0:
            heads = [TapHead(tap, CRITERIA[criterion], w) for tap, w in layer_weights.items()]
            self.percep = HeadsLoss(backbone, heads, **common)
        if style_weight > 0:
            # BasicSR: MSE over (n, c, c) of Grams F F^T / (c h w); perfloss's Gram head sums over (c, c)
            heads = [TapHead(tap, "gram", w / backbone.tap_channels[tap] ** 2) for tap, w in layer_weights.items()]
            self.style = HeadsLoss(backbone, heads, **common)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        percep = None if self.percep is None else self.percep(x, gt) * self.perceptual_weight
        style = None if self.style is None else self.style(x, gt) * self.style_weight
        return percep, style
