"""DISTS (Ding, Ma, Wang, Simoncelli 2020): deep image structure and texture similarity.

VGG-16 with L2 pooling (perfloss.backbones.vgg, ``pooling="l2"``); stage 0 is the image itself,
stages 1..5 end at relu1_2 .. relu5_3. Per stage and channel, from spatial means, population
variances and the covariance: S1 = (2 mx my + c1) / (mx^2 + my^2 + c1) (texture: the feature maps'
means) and S2 = (2 cov + c2) / (vx + vy + c2) (structure: their correlation);
DISTS = 1 - sum alpha S1 + beta S2, with the published alpha, beta (normalised to sum 1) read from
the file the ``dists-pytorch`` wheel ships, without importing that package (it imports torchvision).

The head at each stage computes its value and its gradient in one pass (lean engine); the L2 pools
keep only their input for backward (``perfloss.engine.rules.L2Pool``).
"""
import importlib.util
import os
import sys
from typing import List, Tuple

import torch

from perfloss.backbones.weights import state_dict_argument
from perfloss.heads import TapHead
from perfloss.inputs import check_pair
from perfloss.losses.base import BackboneLoss, build_backbone

TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (3, 64, 128, 256, 512, 512)  # the image, then the five stages
C1 = C2 = 1e-6


def packaged_dists_weights_path() -> str:
    """``weights.pt`` (alpha, beta) of the installed ``dists-pytorch`` wheel, found without importing it.

    The wheel puts the file both in the package folder and, as a data file, at ``sys.prefix`` (where
    the package itself reads it).
    """
    spec = importlib.util.find_spec("DISTS_pytorch")
    candidates = [os.path.join(sys.prefix, "weights.pt")]
    if spec is not None and spec.submodule_search_locations:
        candidates.insert(0, os.path.join(list(spec.submodule_search_locations)[0], "weights.pt"))
    for path in candidates:
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        "DISTS's alpha/beta weights come from the dists-pytorch wheel: install it with "
        "`pip install --no-deps dists-pytorch==0.1`, or pass dists_weights=<path to its weights.pt>"
    )


def load_dists_weights(dists_weights, normalize: bool = True) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Per-stage alpha and beta (C_k,) from None (the wheel's file), a path or a state dict; divided by
    their total when ``normalize`` (as the paper's code does)."""
    state = state_dict_argument(dists_weights, "dists_weights", packaged_dists_weights_path)
    if sorted(state) != ["alpha", "beta"]:
        raise ValueError(f"dists_weights must hold exactly the keys ['alpha', 'beta'], got {sorted(state)}")
    total = sum(CHANNELS)
    for key in ("alpha", "beta"):
        if tuple(state[key].shape) != (1, total, 1, 1):
            raise ValueError(f"dists_weights[{key!r}] must have shape (1, {total}, 1, 1), "
                             f"got {tuple(state[key].shape)}")
    # float64, so that a float64 loss gets the weights to float64 precision (the buffers follow .to())
    alpha, beta = state["alpha"].detach().double().reshape(-1), state["beta"].detach().double().reshape(-1)
    if normalize:
        w_sum = alpha.sum() + beta.sum()
        alpha, beta = alpha / w_sum, beta / w_sum
    return list(alpha.split(CHANNELS)), list(beta.split(CHANNELS))


def similarity(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """sum over channels of alpha S1 + beta S2 per sample (B,), differentiable (the formula as published)."""
    mx, my = x.mean([2, 3], keepdim=True), y.mean([2, 3], keepdim=True)
    s1 = (2 * mx * my + C1) / (mx ** 2 + my ** 2 + C1)
    vx, vy = ((x - mx) ** 2).mean([2, 3], keepdim=True), ((y - my) ** 2).mean([2, 3], keepdim=True)
    cov = (x * y).mean([2, 3], keepdim=True) - mx * my
    s2 = (2 * cov + C2) / (vx + vy + C2)
    return (alpha.to(x.dtype).view(1, -1, 1, 1) * s1 + beta.to(x.dtype).view(1, -1, 1, 1) * s2).sum([1, 2, 3])


def similarity_and_grad(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor,
                        beta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`similarity` and its gradient with respect to ``x``, in one pass without a graph.

    With n = H W: dS1/dx = (2 my D1 - 2 mx N1) / (n D1^2) for every pixel, N1, D1 S1's numerator and
    denominator; dS2/dx = 2 (y - my) / (n D2) - 2 N2 (x - mx) / (n D2^2).
    """
    with torch.no_grad():
        n = x.shape[2] * x.shape[3]
        a, b = alpha.to(x.dtype).view(1, -1, 1, 1), beta.to(x.dtype).view(1, -1, 1, 1)
        mx, my = x.mean([2, 3], keepdim=True), y.mean([2, 3], keepdim=True)
        n1, d1 = 2 * mx * my + C1, mx ** 2 + my ** 2 + C1
        xc, yc = x - mx, y - my
        vx, vy = (xc ** 2).mean([2, 3], keepdim=True), (yc ** 2).mean([2, 3], keepdim=True)
        n2 = 2 * ((x * y).mean([2, 3], keepdim=True) - mx * my) + C2
        d2 = vx + vy + C2
        values = (a * n1 / d1 + b * n2 / d2).sum([1, 2, 3])
        grad = a * (2 * my * d1 - 2 * mx * n1) / (n * d1 ** 2) + (2 * b / (n * d2)) * yc - (2 * b * n2 / (n * d2 ** 2)) * xc
        return values, grad


class DISTSHead(TapHead):
    """The similarity of one DISTS stage (the tap's features): value and gradient in one pass.

    A TapHead of its own kind ``"dists"``; ``weight`` is -1 so that heads add up to minus the
    similarity and DISTS = 1 + stage 0's term + the heads' sum stays a sum of heads.
    """

    def __init__(self, tap: str, alpha: torch.Tensor, beta: torch.Tensor):
        super().__init__(tap, "dists", -1.0)
        self.register_buffer("alpha", alpha.detach().clone())
        self.register_buffer("beta", beta.detach().clone())

    def values(self, features, target):
        return -similarity(features, target.to(features.dtype), self.alpha, self.beta)

    def values_and_grad(self, features, target):
        v, g = similarity_and_grad(features, target.to(features.dtype), self.alpha, self.beta)
        return -v, -g


class DISTS(BackboneLoss):
    """DISTS between images in [0, 1] (ImageNet normalisation inside): 0 for identical images.

    ``weights`` is VGG-16's (``"imagenet"``: torchvision's file, what DISTS was trained with; a path,
    a state dict, or None); ``dists_weights`` alpha and beta (None: the installed dists-pytorch
    wheel's ``weights.pt``; a path or a state dict with keys ``alpha``, ``beta``), divided by their
    total unless ``normalize_dists_weights=False`` (piq uses its file as it is). ``affine``: the
    (scale, shift) from pixels to network input, when not ImageNet's statistics (piq's mean / std).
    ``reduction="none"`` gives one value per sample (B,).
    """

    def __init__(self, weights="imagenet", dists_weights=None, reduction="mean", engine=None, check_range=False,
                 tap_grad_dtype=None, chunk_size=None, normalize_dists_weights=True, affine=None):
        alphas, betas = load_dists_weights(dists_weights, normalize_dists_weights)
        heads = [DISTSHead(tap, a, b) for tap, a, b in zip(TAPS, alphas[1:], betas[1:])]
        super().__init__(build_backbone("vgg16", TAPS, weights, pooling="l2"), heads, input_range=(0.0, 1.0), reduction=reduction, engine=engine,
                         check_range=check_range, tap_grad_dtype=tap_grad_dtype, chunk_size=chunk_size,
                         affine=affine)
        self.register_buffer("image_alpha", alphas[0].clone())
        self.register_buffer("image_beta", betas[0].clone())

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_pair(input, target)
        x, t = self.checked_images("input", input), self.checked_images("target", target)
        if input.shape[1] == 1:  # stage 0 sees the image as the network does: three equal channels
            input, target = input.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        image = similarity(input, target, self.image_alpha, self.image_beta)
        return self.reduce(1 - image + self.per_sample(x, target_x=t))
