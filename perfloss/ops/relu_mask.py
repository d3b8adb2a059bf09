"""perfloss::relu_mask — ReLU / LeakyReLU fused with a 1-bit packed sign mask, and its backward.

``relu_mask(x, negative_slope, keep) -> (y, mask)``: ``y`` is ``relu(x)`` (``leaky_relu`` when
``negative_slope != 0``) in ``x``'s layout, and ``mask`` packs ``x > 0`` for the first ``keep``
samples at 1 bit per element (8 per uint8, memory order, see :mod:`perfloss.ops.bitpack`). The
lean engine runs the target images in the same batch and keeps masks for the input half only.

``relu_mask_(x, negative_slope, keep) -> mask`` is the in-place form (``x`` becomes ``y``).

``relu_mask_backward(grad, mask, negative_slope) -> grad_in``: ``grad`` where the bit is set,
``negative_slope * grad`` elsewhere (mask unpacking fused with the multiply). ``grad`` must be in
the layout the mask was packed in (contiguous or channels_last); ``grad_in`` has that layout.
Both match eager autograd exactly (ReLU backward passes where the output is > 0, LeakyReLU where
the input is > 0: the same set for non-NaN inputs).
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from perfloss.ops import dispatch
from perfloss.ops.bitpack import (from_memory_flat, is_channels_last, memory_flat, pack, packed_bytes,
                                  unpack)


def per_sample(x: torch.Tensor) -> int:
    return x[0].numel() if x.shape[0] else 0


def activation(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return torch.relu(x) if negative_slope == 0.0 else F.leaky_relu(x, negative_slope)


@dispatch.register("relu_mask", "reference", ("cpu", "cuda"))
def _reference(x, negative_slope, keep):
    y = activation(x, negative_slope)
    n = keep * per_sample(x)
    mask = pack(memory_flat(x)[:n] > 0, 1)
    return y, mask


@dispatch.register("relu_mask_backward", "reference", ("cpu", "cuda"))
def _reference_backward(grad, mask, negative_slope):
    flat = memory_flat(grad)
    bits = unpack(mask, 1, flat.numel()).bool()
    out = torch.where(bits, flat, flat * negative_slope)
    return from_memory_flat(out, grad.shape, is_channels_last(grad))


@dispatch.register("relu_mask_", "reference", ("cpu", "cuda"))
def _reference_inplace(x, negative_slope, keep):
    y, mask = _reference(x, negative_slope, keep)
    x.copy_(y)
    return mask


def _cpp_forward(x, negative_slope, keep):
    return dispatch.native_op("relu_mask_kernel")(x, negative_slope, keep)


def _cpp_inplace(x, negative_slope, keep):
    return dispatch.native_op("relu_mask_inplace_kernel")(x, negative_slope, keep)


def _cpp_backward(grad, mask, negative_slope):
    return dispatch.native_op("relu_mask_backward_kernel")(grad, mask, negative_slope)


def _triton_forward(x, negative_slope, keep):
    from perfloss.kernels.relu_mask import relu_mask_forward
    return relu_mask_forward(x, negative_slope, keep)


def _triton_inplace(x, negative_slope, keep):
    y, mask = _triton_forward(x, negative_slope, keep)
    x.copy_(y)
    return mask


def _triton_backward(grad, mask, negative_slope):
    from perfloss.kernels.relu_mask import relu_mask_backward
    return relu_mask_backward(grad, mask, negative_slope)


def _register_fast_paths():
    if dispatch.triton_available():
        dispatch.register("relu_mask", "triton", ("cuda", "cpu"))(_triton_forward)
        dispatch.register("relu_mask_backward", "triton", ("cuda", "cpu"))(_triton_backward)
        dispatch.register("relu_mask_", "triton", ("cuda", "cpu"))(_triton_inplace)
    if dispatch.native_op("relu_mask_kernel") is not None:
        dispatch.register("relu_mask", "cpp", ("cpu",))(_cpp_forward)
        dispatch.register("relu_mask_backward", "cpp", ("cpu",))(_cpp_backward)
    if dispatch.native_op("relu_mask_inplace_kernel") is not None:
        dispatch.register("relu_mask_", "cpp", ("cpu",))(_cpp_inplace)


_register_fast_paths()


@torch.library.custom_op("perfloss::relu_mask", mutates_args=())
def relu_mask_op(x: torch.Tensor, negative_slope: float, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return dispatch.call("relu_mask", x, negative_slope, keep)


@relu_mask_op.register_fake
def _(x, negative_slope, keep):
    y = torch.empty_like(x)
    return y, x.new_empty((packed_bytes(keep * per_sample(x), 1),), dtype=torch.uint8)


@torch.library.custom_op("perfloss::relu_mask_", mutates_args=("x",))
def relu_mask_inplace_op(x: torch.Tensor, negative_slope: float, keep: int) -> torch.Tensor:
    return dispatch.call("relu_mask_", x, negative_slope, keep)


@relu_mask_inplace_op.register_fake
def _(x, negative_slope, keep):
    return x.new_empty((packed_bytes(keep * per_sample(x), 1),), dtype=torch.uint8)


@torch.library.custom_op("perfloss::relu_mask_backward", mutates_args=())
def relu_mask_backward_op(grad: torch.Tensor, mask: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return dispatch.call("relu_mask_backward", grad, mask, negative_slope)


@relu_mask_backward_op.register_fake
def _(grad, mask, negative_slope):
    return torch.empty_like(grad)


def relu_mask(x: torch.Tensor, negative_slope: float = 0.0, keep: int = -1):
    """(activation(x), packed mask of x > 0 for the first ``keep`` samples; all when keep < 0)."""
    keep = x.shape[0] if keep < 0 else keep
    if not 0 <= keep <= x.shape[0]:
        raise ValueError(f"keep must be in [0, {x.shape[0]}], got {keep}")
    return relu_mask_op(x, float(negative_slope), int(keep))


def relu_mask_(x: torch.Tensor, negative_slope: float = 0.0, keep: int = -1) -> torch.Tensor:
    """In place: ``x`` becomes activation(x); returns the packed mask of the original ``x > 0`` for the
    first ``keep`` samples (all when keep < 0). ``x`` must be contiguous or channels_last and not
    needed afterwards (the lean engine uses it on conv outputs that the ReLU is the last user of:
    no second activation-sized buffer is allocated or written)."""
    keep = x.shape[0] if keep < 0 else keep
    if not 0 <= keep <= x.shape[0]:
        raise ValueError(f"keep must be in [0, {x.shape[0]}], got {keep}")
    if not (x.is_contiguous() or is_channels_last(x)):
        raise ValueError("relu_mask_: x must be contiguous or channels_last")
    return relu_mask_inplace_op(x, float(negative_slope), int(keep))


def relu_mask_backward(grad: torch.Tensor, mask: torch.Tensor, negative_slope: float = 0.0) -> torch.Tensor:
    if mask.dtype != torch.uint8 or mask.numel() != packed_bytes(grad.numel(), 1):
        raise ValueError(f"mask must be uint8 with {packed_bytes(grad.numel(), 1)} bytes, got {mask.dtype} {mask.numel()}")
    return relu_mask_backward_op(grad, mask, float(negative_slope))
