"""PerceptualLoss: feature reconstruction distance at one or more taps of a frozen network."""
import torch

from perfloss import inputs
from perfloss.heads import TapHead
from perfloss.losses.base import BackboneLoss, build_backbone, check_layers, layer_weights_for

DISTANCES = ("mse", "l1", "cosine", "lpips")


class PerceptualLoss(BackboneLoss):
    """sum over layers of layer_weight * distance(phi(input), phi(target)), per sample, then reduced.

    ``distance``: ``"mse"`` (mean over C, H, W: Johnson et al.'s 1/(CHW)), ``"l1"`` (mean absolute),
    ``"cosine"`` (1 - cosine similarity over channels, mean over pixels) or ``"lpips"``
    (channel-unit-normalised squared distance, unweighted, summed over channels, mean over pixels).
    ``backbone`` is a name from ``perfloss.backbones.list_backbones()`` or a Backbone that has the
    requested taps. Images are in ``input_range``; ImageNet normalisation happens inside.
    """

    def __init__(self, backbone="vgg16", layers=("relu2_2",), layer_weights=None, distance="mse",
                 weights="imagenet", input_range=(0, 1), reduction="mean", engine=None, check_range=False,
                 tap_grad_dtype=None,
                 chunk_size=None):
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        layers = check_layers(layers)
        heads = [TapHead(tap, distance, w) for tap, w in zip(layers, layer_weights_for(layers, layer_weights))]
        super().__init__(build_backbone(backbone, layers, weights), heads, input_range=input_range,
                         reduction=reduction, engine=engine, check_range=check_range,
                         tap_grad_dtype=tap_grad_dtype, chunk_size=chunk_size)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inputs.check_pair(input, target)
        x, t = self.checked_images("input", input), self.checked_images("target", target)
        return self.reduce(self.per_sample(x, target_x=t))
