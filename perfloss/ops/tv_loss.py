"""perfloss::tv_loss — total variation of images, per sample, and its gradient.

value_b = mean |x[h+1] - x[h]| + mean |x[w+1] - x[w]| (``l1``) or the same with squares (``l2``),
each mean taken over that direction's C*(H-1)*W or C*H*(W-1) differences.

NaN and Inf propagate as through the plain-PyTorch formula and its autograd: a NaN pixel (or two
equal Infs side by side, Inf - Inf) makes the sample's value NaN; the gradient is NaN or Inf where
the formula's is, at that pixel and its neighbours.

Implementations: :func:`tv_loss_reference` (below), C++ ``csrc/tv_loss.cpp`` (CPU), Triton
``kernels/tv_loss.py`` (CUDA); see :mod:`perfloss.ops.library`.
"""
from typing import Tuple

import torch

from perfloss.inputs import reduce
from perfloss.kernels.common import acc_dtype
from perfloss.ops import library
from perfloss.ops.common import (
    check_features, empty_grad, fake_values_and_grad, laid_out_like, register_fused_grad_autograd,
)

KINDS = ("l1", "l2")


def tv_loss_reference(x: torch.Tensor, kind: str, compute_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    a = x.to(acc_dtype(x.dtype))
    dh = a[:, :, 1:, :] - a[:, :, :-1, :]
    dw = a[:, :, :, 1:] - a[:, :, :, :-1]
    if kind == "l1":
        values = dh.abs().mean(dim=(1, 2, 3)) + dw.abs().mean(dim=(1, 2, 3))
        gh, gw = torch.sign(dh) / dh[0].numel(), torch.sign(dw) / dw[0].numel()
    else:
        values = dh.square().mean(dim=(1, 2, 3)) + dw.square().mean(dim=(1, 2, 3))
        gh, gw = dh * (2.0 / dh[0].numel()), dw * (2.0 / dw[0].numel())
    if not compute_grad:
        return values, empty_grad(x)
    grad = torch.zeros_like(a)
    grad[:, :, 1:, :] += gh
    grad[:, :, :-1, :] -= gh
    grad[:, :, :, 1:] += gw
    grad[:, :, :, :-1] -= gw
    return values, laid_out_like(x, grad.to(x.dtype))


tv_loss_op = library.define("tv_loss", tv_loss_reference, triton=library.triton_kernel("tv_loss", "tv_loss"))


@tv_loss_op.register_fake
def _(x, kind, compute_grad):
    return fake_values_and_grad(x, compute_grad)


register_fused_grad_autograd(tv_loss_op)


def tv_loss(x, kind="l1", reduction="mean"):
    """Total-variation loss of images x (B, C, H, W), H and W >= 2."""
    check_features("x", x)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x must be at least 2x2 for total variation, got {x.shape[2]}x{x.shape[3]}")
    values, _ = tv_loss_op(x, kind, torch.is_grad_enabled() and x.requires_grad)
    return reduce(values, reduction)
