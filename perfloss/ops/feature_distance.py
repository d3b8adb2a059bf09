"""perfloss::feature_distance — per-sample distance between two feature maps, and its gradient.

Kinds, per sample over a (C, H, W) feature map:
- ``mse``:    mean over C, H, W of (f0 - f1)^2 (Johnson et al.'s 1/(CHW) normalisation);
- ``l1``:     mean over C, H, W of |f0 - f1|;
- ``cosine``: mean over H, W of 1 - <n0, n1>;
- ``lpips``:  mean over H, W of sum_c w_c (n0_c - n1_c)^2 (w = 1 when no weight is given);
where n = f / sqrt(sum_c f^2 + EPS) normalises each pixel's channel vector. EPS sits inside the
square root so the gradient stays finite where a feature vector is zero (the lpips package adds
its 1e-10 outside the root and gives NaN there).

With ``compute_grad`` the op also returns d(sum of values)/d f0, computed in the same pass: the
autograd rule keeps only that gradient, and the lean engine stores it as a tap gradient.

NaN and Inf propagate as through the plain-PyTorch formula and its autograd: a sample with a NaN
(or Inf - Inf) has a NaN value, an Inf difference gives an Inf ``mse`` / ``l1`` value, and the
gradient is NaN or Inf exactly where the formula's is (for ``cosine`` / ``lpips``, across that
pixel's channels). No implementation turns them into finite numbers.

Implementations: :func:`feature_distance_reference` (below), C++ ``csrc/feature_distance.cpp`` (CPU),
Triton ``kernels/feature_distance.py`` (CUDA, the default) and CUDA C++ ``csrc/cuda/feature_distance.cu``
(CUDA, under ``library.use("cpp")``; the per-element math ``csrc/loss_math.h`` is the CPU kernel's); see
:mod:`perfloss.ops.library`.
"""
from typing import Optional, Tuple

import torch

from perfloss.inputs import check_same, reduce
from perfloss.kernels.common import acc_dtype
from perfloss.ops import library
from perfloss.ops.common import (
    check_features, empty_grad, fake_values_and_grad, laid_out_like, register_fused_grad_autograd,
)

KINDS = ("mse", "l1", "cosine", "lpips")
EPS = 1e-10


def unit_normalize(f: torch.Tensor) -> torch.Tensor:
    return f * torch.rsqrt(f.square().sum(dim=1, keepdim=True) + EPS)


def distance_formula(f0: torch.Tensor, f1: torch.Tensor, kind: str, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """The plain-PyTorch formula, differentiable in every argument; per-sample values."""
    acc = acc_dtype(f0.dtype)
    f0, f1 = f0.to(acc), f1.to(acc)
    if kind == "mse":
        return (f0 - f1).square().mean(dim=(1, 2, 3))
    if kind == "l1":
        return (f0 - f1).abs().mean(dim=(1, 2, 3))
    if kind == "cosine":
        return (1 - (unit_normalize(f0) * unit_normalize(f1)).sum(dim=1)).mean(dim=(1, 2))
    return lpips_map(f0, f1, weight)[:, 0].mean(dim=(1, 2))


def lpips_map(f0: torch.Tensor, f1: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """LPIPS's per-pixel distance (B, 1, H, W): the channel-unit-normalised squared difference, times
    ``weight`` (C,) when given, summed over channels; in f0's dtype."""
    d = (unit_normalize(f0) - unit_normalize(f1)).square()
    if weight is not None:
        d = d * weight.to(d.dtype).view(1, -1, 1, 1)
    return d.sum(dim=1, keepdim=True)


def feature_distance_reference(f0: torch.Tensor, f1: torch.Tensor, kind: str, weight: Optional[torch.Tensor],
                               compute_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    values = distance_formula(f0, f1, kind, weight)
    if not compute_grad:
        return values, empty_grad(f0)
    acc = values.dtype
    a, b = f0.to(acc), f1.to(acc)
    c, h, w = f0.shape[1:]
    if kind == "mse":
        grad = (a - b) * (2.0 / (c * h * w))
    elif kind == "l1":
        grad = torch.sign(a - b) / (c * h * w)
    else:
        # n = f / r with r = sqrt(|f|^2 + EPS), so dn/df = (I - n n^T) / r.
        inv_r0 = torch.rsqrt(a.square().sum(dim=1, keepdim=True) + EPS)
        n0, n1 = a * inv_r0, unit_normalize(b)
        if kind == "cosine":
            upstream = -n1 / (h * w)
        else:
            lin = 1.0 if weight is None else weight.to(acc).view(1, -1, 1, 1)
            upstream = 2.0 * lin * (n0 - n1) / (h * w)
        grad = (upstream - n0 * (n0 * upstream).sum(dim=1, keepdim=True)) * inv_r0
    return values, laid_out_like(f0, grad.to(f0.dtype))


feature_distance_op = library.define("feature_distance", feature_distance_reference,
                                     triton=library.triton_kernel("feature_distance", "feature_distance"))


@feature_distance_op.register_fake
def _(f0, f1, kind, weight, compute_grad):
    return fake_values_and_grad(f0, compute_grad)


register_fused_grad_autograd(feature_distance_op)


def check_args(f0, f1, kind, weight):
    check_features("f0", f0)
    check_features("f1", f1)
    check_same("f0", f0, "f1", f1)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if weight is not None:
        if kind != "lpips":
            raise ValueError(f"weight is only used by kind='lpips', got kind={kind!r}")
        if weight.numel() != f0.shape[1]:
            raise ValueError(f"weight must have one entry per channel ({f0.shape[1]}), got shape {tuple(weight.shape)}")


def feature_distance_values(f0, f1, kind="mse", weight=None, compute_grad=False):
    """Per-sample values and, with ``compute_grad``, d(sum of values)/d f0 — no autograd graph.

    The lean engine calls this in its forward pass to get each tap's gradient.
    """
    check_args(f0, f1, kind, weight)
    if weight is not None:
        weight = weight.reshape(-1)
    return feature_distance_op(f0, f1, kind, weight, compute_grad)


def feature_distance(f0, f1, kind="mse", weight=None, reduction="mean"):
    """Distance between feature maps f0 and f1 (B, C, H, W), reduced over the batch.

    The fused op computes the value and d/d f0 in one pass and autograd keeps only that gradient.
    When f1 or weight need gradients too, the plain formula runs instead.
    """
    check_args(f0, f1, kind, weight)
    if weight is not None:
        weight = weight.reshape(-1)
    needs_other_grads = torch.is_grad_enabled() and (
        f1.requires_grad or (weight is not None and weight.requires_grad)
    )
    if needs_other_grads:
        return reduce(distance_formula(f0, f1, kind, weight), reduction)
    wants_grad = torch.is_grad_enabled() and f0.requires_grad
    values, _ = feature_distance_op(f0, f1, kind, weight, wants_grad)
    return reduce(values, reduction)
