"""Op ``perfloss::pgn_head``: the fused head of a perceptual gradient network.

    proxy = gain * sigmoid(out) + offset[c]
    grad  = coef * (y_hat - proxy)

For the default sigmoid head, ``gain = 1.1 * (hi - lo)``, ``offset = lo - 0.1 * (hi - lo) * mean_imagenet``
and ``coef = 2 / (C H W s)`` (see :mod:`perfloss.pgn.heads`). Outputs have y_hat's dtype; ``out`` may be
bf16/fp16 (the math runs in fp32). Inference-only: the op has no autograd formula (the PGN's
training path uses the plain-PyTorch head).

Implementations (``perfloss.ops.dispatch``): ``triton`` (CUDA; CPU only when forced with
``PERFLOSS_IMPL=triton`` and ``TRITON_INTERPRET=1``) and ``reference`` (plain PyTorch, CPU and CUDA).
"""
from typing import Tuple

import torch

from . import dispatch

OP = "pgn_head"


@dispatch.register(OP, "triton", ("cuda", "cpu"))
def _pgn_head_triton(out, y_hat, offset, gain, coef):
    from perfloss.kernels.pgn_head import pgn_head as kernel

    return kernel(out, y_hat, offset, gain, coef)


@dispatch.register(OP, "reference", ("cpu", "cuda"))
def _pgn_head_reference(out, y_hat, offset, gain, coef):
    p = gain * torch.sigmoid(out.float()) + offset.to(out.device, torch.float32).view(1, -1, 1, 1)
    g = coef * (y_hat.float() - p)
    return p.to(y_hat.dtype), g.to(y_hat.dtype)


def _check(out, y_hat, offset):
    if out.dim() != 4:
        raise ValueError(f"out must have shape (N, C, H, W), got {tuple(out.shape)}")
    if y_hat.shape != out.shape:
        raise ValueError(f"y_hat must have the shape of out {tuple(out.shape)}, got {tuple(y_hat.shape)}")
    if offset.shape != (out.shape[1],):
        raise ValueError(f"offset must have shape ({out.shape[1]},), got {tuple(offset.shape)}")
    if not (out.is_floating_point() and y_hat.is_floating_point()):
        raise TypeError(f"out and y_hat must be floating point, got {out.dtype} and {y_hat.dtype}")


@torch.library.custom_op("perfloss::pgn_head", mutates_args=())
def pgn_head_op(out: torch.Tensor, y_hat: torch.Tensor, offset: torch.Tensor, gain: float,
                coef: float) -> Tuple[torch.Tensor, torch.Tensor]:
    _check(out, y_hat, offset)
    proxy, grad = dispatch.call(OP, out, y_hat, offset, gain, coef)
    return proxy, grad


@pgn_head_op.register_fake
def _(out, y_hat, offset, gain, coef):
    _check(out, y_hat, offset)
    return torch.empty_like(y_hat), torch.empty_like(y_hat)


def pgn_head(out: torch.Tensor, y_hat: torch.Tensor, offset: torch.Tensor, gain: float, coef: float):
    """(proxy, grad) = the fused sigmoid head; see the module docstring."""
    return pgn_head_op(out, y_hat, offset, float(gain), float(coef))
