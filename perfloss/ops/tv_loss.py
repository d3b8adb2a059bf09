"""perfloss::tv_loss — total variation of images, per sample, and its gradient.

value_b = mean |x[h+1] - x[h]| + mean |x[w+1] - x[w]| (``l1``) or the same with squares (``l2``),
each mean taken over that direction's C*(H-1)*W or C*H*(W-1) differences.
"""
from typing import Tuple

import torch

from perfloss.ops import dispatch
from perfloss.ops.common import (
    check_features, empty_grad, fake_values_and_grad, laid_out_like, reduce,
    register_fused_grad_autograd, value_dtype,
)

KINDS = ("l1", "l2")


# Implementations (dispatch.PREFERENCE picks among them; backend_info() shows which runs).
_native = dispatch.native_op("tv_loss_kernel")
if _native is not None:

    @dispatch.register("tv_loss", "cpp", ("cpu",))
    def _cpp(x, kind, compute_grad):
        return _native(x, kind, compute_grad)


@dispatch.register("tv_loss", "triton", ("cuda", "cpu"))
def _triton(x, kind, compute_grad):
    from perfloss.kernels.tv_loss import tv_loss as kernel

    return kernel(x, kind, compute_grad)


@dispatch.register("tv_loss", "reference", ("cpu", "cuda"))
def _reference(x, kind, compute_grad):
    a = x.to(value_dtype(x.dtype))
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


@torch.library.custom_op("perfloss::tv_loss", mutates_args=())
def tv_loss_op(x: torch.Tensor, kind: str, compute_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return dispatch.call("tv_loss", x, kind, compute_grad)


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
