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

NaN and Inf: ``y`` is PyTorch's (NaN stays NaN, +-Inf map as ReLU / LeakyReLU map them); an input of -0
gives +0 where ``torch.relu`` on CPU keeps -0 (equal values: no loss or gradient differs). A NaN
input's mask bit is 0 (NaN > 0 is false), so the backward gives ``negative_slope * grad`` there,
as LeakyReLU's eager backward does; eager ReLU's backward passes ``grad`` at a NaN input instead (its
output, NaN, is not <= 0), while here it is 0: the loss value is NaN either way. A NaN or Inf in
``grad`` propagates where the bit is set (and, with a slope, elsewhere); with slope 0 the masked-out
entries are exactly 0, as in eager.

Implementations: the ``*_reference`` functions below, C++ ``csrc/relu_mask.cpp`` (CPU), CUDA C++
``csrc/cuda/relu_mask.cu`` and Triton ``kernels/relu_mask.py`` (CUDA; per-element math shared with the CPU
kernel in ``csrc/lean_math.h``); see :mod:`perfloss.ops.library`.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from perfloss.kernels.common import packed_bytes, work_channels_last
from perfloss.ops import library
from perfloss.ops.bitpack import from_memory_flat, memory_flat, pack, unpack


def _per_sample(x: torch.Tensor) -> int:
    return x[0].numel() if x.shape[0] else 0


def relu_mask_reference(x: torch.Tensor, negative_slope: float, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    y = torch.relu(x) if negative_slope == 0.0 else F.leaky_relu(x, negative_slope)
    return y, pack(memory_flat(x)[:keep * _per_sample(x)] > 0, 1)


def relu_mask_inplace_reference(x: torch.Tensor, negative_slope: float, keep: int) -> torch.Tensor:
    y, mask = relu_mask_reference(x, negative_slope, keep)
    x.copy_(y)
    return mask


def relu_mask_backward_reference(grad: torch.Tensor, mask: torch.Tensor, negative_slope: float) -> torch.Tensor:
    flat = memory_flat(grad)
    bits = unpack(mask, 1, flat.numel()).bool()
    # ReLU's backward selects 0 (never 0 * grad, which is NaN for an infinite or NaN grad)
    other = flat * negative_slope if negative_slope != 0.0 else torch.zeros((), dtype=flat.dtype)
    return from_memory_flat(torch.where(bits, flat, other), grad.shape, work_channels_last(grad))


relu_mask_op = library.define("relu_mask", relu_mask_reference,
                              triton=library.triton_kernel("relu_mask", "relu_mask"))
relu_mask_inplace_op = library.define("relu_mask_", relu_mask_inplace_reference, mutates_args=("x",),
                                      triton=library.triton_kernel("relu_mask", "relu_mask_"))
relu_mask_backward_op = library.define("relu_mask_backward", relu_mask_backward_reference,
                                       triton=library.triton_kernel("relu_mask", "relu_mask_backward"))


def _fake_mask(x: torch.Tensor, keep: int) -> torch.Tensor:
    return x.new_empty((packed_bytes(keep * _per_sample(x), 1),), dtype=torch.uint8)


@relu_mask_op.register_fake
def _(x, negative_slope, keep):
    return torch.empty_like(x), _fake_mask(x, keep)


@relu_mask_inplace_op.register_fake
def _(x, negative_slope, keep):
    return _fake_mask(x, keep)


@relu_mask_backward_op.register_fake
def _(grad, mask, negative_slope):
    return torch.empty_like(grad)


def _check_keep(x: torch.Tensor, keep: int) -> int:
    keep = x.shape[0] if keep < 0 else keep
    if not 0 <= keep <= x.shape[0]:
        raise ValueError(f"keep must be in [0, {x.shape[0]}], got {keep}")
    return int(keep)


def relu_mask(x: torch.Tensor, negative_slope: float = 0.0, keep: int = -1):
    """(activation(x), packed mask of x > 0 for the first ``keep`` samples; all when keep < 0)."""
    return relu_mask_op(x, float(negative_slope), _check_keep(x, keep))


def relu_mask_(x: torch.Tensor, negative_slope: float = 0.0, keep: int = -1) -> torch.Tensor:
    """In place: ``x`` becomes activation(x); returns the packed mask of the original ``x > 0`` for the
    first ``keep`` samples (all when keep < 0). ``x`` must be contiguous or channels_last and not
    needed afterwards (the lean engine uses it on conv outputs that the ReLU is the last user of:
    no second activation-sized buffer is allocated or written)."""
    keep = _check_keep(x, keep)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("relu_mask_: x must be contiguous or channels_last")
    return relu_mask_inplace_op(x, float(negative_slope), keep)


def relu_mask_backward(grad: torch.Tensor, mask: torch.Tensor, negative_slope: float = 0.0) -> torch.Tensor:
    if mask.dtype != torch.uint8 or mask.numel() != packed_bytes(grad.numel(), 1):
        raise ValueError(f"mask must be uint8 with {packed_bytes(grad.numel(), 1)} bytes, got {mask.dtype} {mask.numel()}")
    return relu_mask_backward_op(grad, mask, float(negative_slope))
