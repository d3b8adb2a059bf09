"""Proxy-target regression (Weber 2021's "inverse examples").

A generator step with any loss L equals a least-squares regression of the generator output x onto
the fixed target t = sg(x - step * grad_x L):

    d/dx 0.5 * ||x - sg(t)||^2 = x - t = step * grad_x L.

``proxy_target`` builds t from any gradient source (a perceptual gradient network, a true
perceptual gradient, a discriminator's gradient) and ``proxy_regression`` is the loss whose gradient
with respect to x is exactly ``step * grad`` (per sample, with ``reduction="sum"``).
"""
from numbers import Real
from typing import Union

import torch

from perfloss.inputs import REDUCTIONS, check_same, reduce



def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a 0-d tensor")


def _check_pair(xname: str, x, tname: str, t) -> None:
    _check_tensor(xname, x)
    _check_tensor(tname, t)
    check_same(xname, x, tname, t)


def proxy_target(x: torch.Tensor, grad: torch.Tensor, step: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
    """The regression target ``(x - step * grad).detach()``.

    ``step`` is a number or a tensor broadcastable to ``x`` (e.g. one step per sample, shape (N, 1, 1, 1)).
    """
    _check_pair("x", x, "grad", grad)
    if isinstance(step, torch.Tensor):
        if not step.is_floating_point():
            raise TypeError(f"step must be a floating-point number or tensor, got dtype {step.dtype}")
        try:
            torch.broadcast_shapes(step.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"step of shape {tuple(step.shape)} does not broadcast to x {tuple(x.shape)}") from None
        step = step.detach()
    elif not isinstance(step, Real) or isinstance(step, bool):
        raise TypeError(f"step must be a real number or a tensor, got {type(step).__name__}")
    with torch.no_grad():
        return (x.detach() - step * grad.detach()).detach()


def proxy_regression(x: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``0.5 * ||x - sg(target)||^2`` summed per sample over all non-batch dimensions.

    ``reduction``: ``"mean"`` over the batch, ``"sum"`` over the batch, or ``"none"`` (shape (N,)).
    With ``target = proxy_target(x, g, step)`` and ``reduction="sum"`` the gradient with respect to
    ``x`` is exactly ``x - target = step * g`` (up to the rounding of ``x - step * g``).
    """
    _check_pair("x", x, "target", target)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    diff = x - target.detach()
    return reduce(0.5 * diff.reshape(diff.shape[0], -1).pow(2).sum(dim=1), reduction)
