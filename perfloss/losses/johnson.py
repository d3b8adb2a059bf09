"""JohnsonLoss: Johnson et al.'s content + style + total-variation objective in one backbone pass."""
from typing import Optional

import torch

from perfloss import inputs
from perfloss.heads import TapHead
from perfloss.losses.base import BackboneLoss, build_backbone, check_layers
from perfloss.losses.style import JOHNSON_STYLE_LAYERS, StyleTargetMixin
from perfloss.ops.tv_loss import tv_loss


class JohnsonLoss(StyleTargetMixin, BackboneLoss):
    """content_weight * MSE(phi_j) + style_weight * sum_j ||G_j - G_j(style)||_F^2 + tv_weight * TV.

    Defaults are the paper's layers (content relu2_2; style relu1_2, relu2_2, relu3_3, relu4_3 of
    VGG-16) and the reference implementation's weights (1.0, 5.0, 1e-6). perfloss's TV is a mean
    over pixel differences (see ``tv_loss``), not the reference's sum, so the same ``tv_weight``
    regularises less; raise it to match. The input's features are computed once for both the
    content and the style terms.
    """

    def __init__(self, content_weight=1.0, style_weight=5.0, tv_weight=1e-6, content_layers=("relu2_2",),
                 style_layers=JOHNSON_STYLE_LAYERS, tv_kind="l2", backbone="vgg16", weights="imagenet",
                 input_range=(0, 1), reduction="mean", engine=None, check_range=False, tap_grad_dtype=None,
                 chunk_size=None):
        content_layers, style_layers = check_layers(content_layers), check_layers(style_layers)
        heads = [TapHead(tap, "mse", content_weight) for tap in content_layers]
        heads += [TapHead(tap, "gram", style_weight) for tap in style_layers]
        taps = list(dict.fromkeys(content_layers + style_layers))
        super().__init__(build_backbone(backbone, taps, weights), heads, input_range=input_range,
                         reduction=reduction, engine=engine, check_range=check_range,
                         tap_grad_dtype=tap_grad_dtype, chunk_size=chunk_size)
        self.num_content = len(content_layers)
        self.tv_weight = float(tv_weight)
        self.tv_kind = tv_kind

    def style_heads(self):
        return list(self.heads)[self.num_content:]

    def forward(self, input: torch.Tensor, content_target: torch.Tensor,
                style_target: Optional[torch.Tensor] = None) -> torch.Tensor:
        inputs.check_pair(input, content_target)
        x = self.checked_images("input", input)
        content = self.checked_images("content_target", content_target)
        targets = self.target_representations(content, self.heads[:self.num_content])
        if style_target is None:
            targets += self.cached_grams()
        else:
            inputs.check_pair(input, style_target, same_shape=False)
            self.check_style_batch(input, style_target)
            targets += self.style_grams("style_target", style_target)
        values = self.per_sample(x, targets=targets)
        if self.tv_weight:
            values = values + self.tv_weight * tv_loss(input, self.tv_kind, reduction="none")
        return self.reduce(values)
