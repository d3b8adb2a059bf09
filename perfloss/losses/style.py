"""StyleLoss: squared Frobenius distance between Gram matrices, summed over layers."""
from typing import List, Optional

import torch

from perfloss import inputs
from perfloss.heads import TapHead
from perfloss.losses.base import BackboneLoss, build_backbone, check_layers, layer_weights_for

JOHNSON_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


class StyleTargetMixin:
    """A fixed style image's Grams, computed once by ``set_target`` and kept as buffers."""

    def set_target(self, style: torch.Tensor) -> None:
        """Compute and cache the target Grams of ``style`` (1 or B images, any size the network allows)."""
        grams = self.style_grams("style", style)
        for head, g in zip(self.style_heads(), grams):
            self.register_buffer(f"target_gram_{head.tap}", g, persistent=False)
        self.has_target = True

    def cached_grams(self) -> List[torch.Tensor]:
        if not getattr(self, "has_target", False):
            raise ValueError("no style target: call set_target(style_image) first or pass the target")
        return [getattr(self, f"target_gram_{head.tap}") for head in self.style_heads()]

    def style_grams(self, name: str, style: torch.Tensor) -> List[torch.Tensor]:
        return self.target_representations(self.checked_images(name, style), self.style_heads())

    def check_style_batch(self, input: torch.Tensor, style: torch.Tensor) -> None:
        if style.shape[0] not in (1, input.shape[0]):
            raise ValueError(f"style target batch must be 1 or {input.shape[0]} (the input's), got {style.shape[0]}")


class StyleLoss(StyleTargetMixin, BackboneLoss):
    """sum over layers of layer_weight * ||G(phi(input)) - G(phi(target))||_F^2, G = F F^T / (C H W).

    The target is either passed to ``forward`` (a batch of B or 1 images, any size) or fixed once
    with ``set_target(style_image)``, whose Grams are then reused every step.
    """

    def __init__(self, backbone="vgg16", layers=JOHNSON_STYLE_LAYERS, layer_weights=None, weights="imagenet",
                 input_range=(0, 1), reduction="mean", engine=None, check_range=False, tap_grad_dtype=None,
                 chunk_size=None):
        layers = check_layers(layers)
        heads = [TapHead(tap, "gram", w) for tap, w in zip(layers, layer_weights_for(layers, layer_weights))]
        super().__init__(build_backbone(backbone, layers, weights), heads, input_range=input_range,
                         reduction=reduction, engine=engine, check_range=check_range,
                         tap_grad_dtype=tap_grad_dtype, chunk_size=chunk_size)

    def style_heads(self):
        return list(self.heads)

    def forward(self, input: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.checked_images("input", input)
        if target is None:
            grams = self.cached_grams()
        else:
            inputs.check_pair(input, target, same_shape=False)
            self.check_style_batch(input, target)
            grams = self.style_grams("target", target)
        return self.reduce(self.per_sample(x, targets=grams))
