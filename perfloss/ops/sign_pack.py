"""perfloss::sign_pack — a tensor of the form ``scale * sign(t)`` stored at 2 bits per element.

The L1 head's gradient is ``weight / (C H W) * sign(f - target)``: the lean engine keeps it as
2-bit codes (0: zero, 1: +scale, 2: -scale; 4 per uint8, memory order) plus one scale.

``sign_pack(g) -> codes``; ``sign_unpack(codes, scale, grad_values, sizes, channels_last) -> t``
with ``t[b] = grad_values[b] * (sign[b] * scale)`` in ``scale``'s dtype: bit-for-bit what eager
autograd gives for ``grad_values[b] * g[b]`` when ``g = sign * scale``.
"""
from typing import List

import torch

from perfloss.ops import dispatch
from perfloss.ops.bitpack import from_memory_flat, memory_flat, memory_format_of, pack, packed_bytes, unpack


@dispatch.register("sign_pack", "reference", ("cpu", "cuda"))
def _reference(g):
    flat = memory_flat(g)
    return pack((flat > 0).to(torch.uint8) + 2 * (flat < 0).to(torch.uint8), 2)


@dispatch.register("sign_unpack", "reference", ("cpu", "cuda"))
def _reference_unpack(codes, scale, grad_values, sizes, channels_last):
    numel = 1
    for s in sizes:
        numel *= s
    code = unpack(codes, 2, numel)
    sign = (code == 1).to(scale.dtype) - (code == 2).to(scale.dtype)
    t = from_memory_flat(sign * scale, sizes, channels_last)
    gv = grad_values.to(scale.dtype).view(-1, *([1] * (len(sizes) - 1)))
    return gv * t


def _cpp_pack(g):
    return dispatch.native_op("sign_pack_kernel")(g)


def _cpp_unpack(codes, scale, grad_values, sizes, channels_last):
    return dispatch.native_op("sign_unpack_kernel")(codes, scale, grad_values, sizes, channels_last)


def _triton_pack(g):
    from perfloss.kernels.sign_pack import sign_pack
    return sign_pack(g)


def _triton_unpack(codes, scale, grad_values, sizes, channels_last):
    from perfloss.kernels.sign_pack import sign_unpack
    return sign_unpack(codes, scale, grad_values, sizes, channels_last)


def _register_fast_paths():
    if dispatch.triton_available():
        dispatch.register("sign_pack", "triton", ("cuda", "cpu"))(_triton_pack)
        dispatch.register("sign_unpack", "triton", ("cuda", "cpu"))(_triton_unpack)
    if dispatch.native_op("sign_pack_kernel") is not None:
        dispatch.register("sign_pack", "cpp", ("cpu",))(_cpp_pack)
        dispatch.register("sign_unpack", "cpp", ("cpu",))(_cpp_unpack)


_register_fast_paths()


@torch.library.custom_op("perfloss::sign_pack", mutates_args=())
def sign_pack_op(g: torch.Tensor) -> torch.Tensor:
    return dispatch.call("sign_pack", g)


@sign_pack_op.register_fake
def _(g):
    return g.new_empty((packed_bytes(g.numel(), 2),), dtype=torch.uint8)


@torch.library.custom_op("perfloss::sign_unpack", mutates_args=())
def sign_unpack_op(codes: torch.Tensor, scale: torch.Tensor, grad_values: torch.Tensor, sizes: List[int],
                   channels_last: bool) -> torch.Tensor:
    return dispatch.call("sign_unpack", codes, scale, grad_values, sizes, channels_last)


@sign_unpack_op.register_fake
def _(codes, scale, grad_values, sizes, channels_last):
    return scale.new_empty(sizes).contiguous(memory_format=memory_format_of(channels_last))


def sign_pack(g: torch.Tensor) -> torch.Tensor:
    return sign_pack_op(g)


def sign_unpack(codes, scale, grad_values, sizes, channels_last=False) -> torch.Tensor:
    return sign_unpack_op(codes, scale, grad_values, [int(s) for s in sizes], bool(channels_last))
