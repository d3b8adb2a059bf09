"""perfloss::sign_pack — a tensor of the form ``scale * sign(t)`` stored at 2 bits per element.

The L1 head's gradient is ``weight / (C H W) * sign(f - target)``: the lean engine keeps it as
2-bit codes (0: zero, 1: +scale, 2: -scale; 4 per uint8, memory order) plus one scale.

``sign_pack(g) -> codes``; ``sign_unpack(codes, scale, grad_values, sizes, channels_last) -> t``
with ``t[b] = grad_values[b] * (sign[b] * scale)`` in ``scale``'s dtype: bit-for-bit what eager
autograd gives for ``grad_values[b] * g[b]`` when ``g = sign * scale``.

NaN: a 2-bit code has no room for it, so a NaN in ``g`` packs as 0 (zero) where eager's
``torch.sign`` gives NaN. The L1 head's value at that tap is NaN itself, so the loss shows it; the
stored gradient is 0 there. In ``sign_unpack``, NaN or Inf in ``grad_values`` or ``scale``
propagate as eager's multiplication does (0 * Inf is NaN).

Implementations: the ``*_reference`` functions below, C++ ``csrc/sign_pack.cpp`` (CPU), CUDA C++
``csrc/cuda/sign_pack.cu`` and Triton ``kernels/sign_pack.py`` (CUDA; per-element math shared with the CPU
kernel in ``csrc/lean_math.h``); see :mod:`perfloss.ops.library`.
"""
from typing import List

import torch

from perfloss.kernels.common import memory_format_of, packed_bytes
from perfloss.ops import library
from perfloss.ops.bitpack import from_memory_flat, memory_flat, pack, unpack


def sign_pack_reference(g: torch.Tensor) -> torch.Tensor:
    flat = memory_flat(g)
    return pack((flat > 0).to(torch.uint8) + 2 * (flat < 0).to(torch.uint8), 2)


def sign_unpack_reference(codes: torch.Tensor, scale: torch.Tensor, grad_values: torch.Tensor, sizes: List[int],
                          channels_last: bool) -> torch.Tensor:
    code = unpack(codes, 2, torch.Size(sizes).numel())
    sign = (code == 1).to(scale.dtype) - (code == 2).to(scale.dtype)
    t = from_memory_flat(sign * scale, sizes, channels_last)
    gv = grad_values.to(scale.dtype).view(-1, *([1] * (len(sizes) - 1)))
    return gv * t


sign_pack_op = library.define("sign_pack", sign_pack_reference, triton=library.triton_kernel("sign_pack", "sign_pack"))
sign_unpack_op = library.define("sign_unpack", sign_unpack_reference,
                                triton=library.triton_kernel("sign_pack", "sign_unpack"))


@sign_pack_op.register_fake
def _(g):
    return g.new_empty((packed_bytes(g.numel(), 2),), dtype=torch.uint8)


@sign_unpack_op.register_fake
def _(codes, scale, grad_values, sizes, channels_last):
    return scale.new_empty(sizes).contiguous(memory_format=memory_format_of(channels_last))


def sign_pack(g: torch.Tensor) -> torch.Tensor:
    return sign_pack_op(g)


def sign_unpack(codes, scale, grad_values, sizes, channels_last=False) -> torch.Tensor:
    return sign_unpack_op(codes, scale, grad_values, [int(s) for s in sizes], bool(channels_last))
