"""perfloss::style_loss — per-sample squared Frobenius distance between Gram matrices.

value_b = sum_ij (G_b - T_b)_ij^2 with G = F F^T / (C H W) (Johnson et al.), and with
``compute_grad`` the gradient 2 (D + D^T) F / (C H W), D = G - T, in the same launch sequence, so
autograd and the lean engine keep that gradient and nothing else. The target Gram T is (B, C, C)
or (1, C, C) (one style image for the whole batch); it can be computed once and cached.

NaN and Inf propagate as through the plain-PyTorch formula (Gram, difference, square, sum) and its
autograd: a NaN anywhere in a sample's features makes its value NaN, and the gradient is NaN or Inf
where the formula's is.

Implementations: :func:`style_loss_reference` (below), C++ ``csrc/style_loss.cpp`` (CPU), two cuBLAS
batched GEMMs around the CUDA C++ epilogue ``csrc/cuda/style_loss.cu`` (CUDA, the default; the epilogue's
math ``csrc/loss_math.h`` is the CPU kernel's) and Triton ``kernels/style_loss.py`` (CUDA, under
``library.use("triton")``); see :mod:`perfloss.ops.library`.
"""
from typing import Tuple

import torch

from perfloss.inputs import reduce
from perfloss.kernels.common import acc_dtype
from perfloss.ops import library
from perfloss.ops.common import (
    check_features, empty_grad, fake_values_and_grad, laid_out_like, register_fused_grad_autograd,
)
from perfloss.ops.gram import gram, gram_formula


def style_loss_reference(features: torch.Tensor, target_gram: torch.Tensor,
                         compute_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = features.shape
    acc = acc_dtype(features.dtype)
    diff = gram_formula(features, True) - target_gram.to(acc)
    values = diff.square().sum(dim=(1, 2))
    if not compute_grad:
        return values, empty_grad(features)
    f = features.reshape(b, c, h * w).to(acc)
    grad = torch.bmm(diff + diff.transpose(1, 2), f) * (2.0 / (c * h * w))
    return values, laid_out_like(features, grad.reshape(features.shape).to(features.dtype))


style_loss_op = library.define("style_loss", style_loss_reference, triton=library.triton_kernel("style_loss", "style_loss"))


@style_loss_op.register_fake
def _(features, target_gram, compute_grad):
    return fake_values_and_grad(features, compute_grad)


register_fused_grad_autograd(style_loss_op)


def check_args(features, target_gram):
    check_features("features", features)
    b, c = features.shape[:2]
    if not isinstance(target_gram, torch.Tensor) or target_gram.dim() != 3 or target_gram.shape[1:] != (c, c):
        shape = tuple(target_gram.shape) if isinstance(target_gram, torch.Tensor) else type(target_gram).__name__
        raise ValueError(f"target_gram must be ({b} or 1, {c}, {c}) for features with {c} channels, got {shape}")
    if target_gram.shape[0] not in (1, b):
        raise ValueError(f"target_gram batch must be 1 or {b}, got {target_gram.shape[0]}")
    if target_gram.device != features.device:
        raise ValueError(f"target_gram is on {target_gram.device} but features are on {features.device}")


def style_loss_values(features, target_gram, compute_grad=False):
    """Per-sample style loss values and, with ``compute_grad``, d(sum of values)/d features."""
    check_args(features, target_gram)
    return style_loss_op(features, target_gram.expand(features.shape[0], -1, -1), compute_grad)


def style_loss(features, target_gram, reduction="mean"):
    """Style loss between features (B, C, H, W) and a target Gram (B or 1, C, C), reduced over the batch.

    When the target Gram needs a gradient, the plain formula runs instead of the fused op.
    """
    check_args(features, target_gram)
    if torch.is_grad_enabled() and target_gram.requires_grad:
        acc = acc_dtype(features.dtype)
        return reduce((gram(features).to(acc) - target_gram.to(acc)).square().sum(dim=(1, 2)), reduction)
    wants_grad = torch.is_grad_enabled() and features.requires_grad
    values, _ = style_loss_op(features, target_gram.expand(features.shape[0], -1, -1), wants_grad)
    return reduce(values, reduction)
