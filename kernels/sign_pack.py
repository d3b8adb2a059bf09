"""Triton kernels for perfloss::sign_pack (2-bit sign codes, 4 per byte) and sign_unpack.

Memory order as in perfloss/ops/bitpack.py (the working layout, kernels/common.py); codes 0: zero, 1: +scale, 2: -scale. The unpack multiplies
by the per-sample incoming gradient in fp32 (fp64 for fp64) and rounds once, as eager does.
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import dense, memory_format_of, packed_bytes


@triton.jit
def _sign_pack(g_ptr, c_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    j = tl.arange(0, 4)
    offs = byte[:, None] * 4 + j[None, :]
    g = tl.load(g_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    code = (g > 0).to(tl.int32) + 2 * (g < 0).to(tl.int32)
    packed = tl.sum(code << (2 * j[None, :]), axis=1)
    tl.store(c_ptr + byte, packed.to(tl.uint8), mask=byte * 4 < n)


@triton.jit
def _sign_unpack(c_ptr, s_ptr, gv_ptr, o_ptr, n, per_sample, F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inb = offs < n
    code = (tl.load(c_ptr + offs // 4, mask=inb, other=0).to(tl.int32) >> (2 * (offs % 4)).to(tl.int32)) & 3
    gv = tl.load(gv_ptr + offs // per_sample, mask=inb, other=0.0)
    s = tl.load(s_ptr)
    if F64:
        t = tl.where(code == 1, s, tl.where(code == 2, -s, 0.0))
        out = gv * t
    else:
        sf = s.to(tl.float32)
        t = tl.where(code == 1, sf, tl.where(code == 2, -sf, 0.0))
        out = gv.to(tl.float32) * t
    tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=inb)


def sign_pack(g: torch.Tensor, block: int = 1024) -> torch.Tensor:
    g = dense(g)
    n = g.numel()
    codes = torch.empty(packed_bytes(n, 2), dtype=torch.uint8, device=g.device)
    if n:
        _sign_pack[(triton.cdiv(triton.cdiv(n, 4), block),)](g, codes, n, BLOCK=block)
    return codes


def sign_unpack(codes, scale, grad_values, sizes, channels_last, block: int = 4096) -> torch.Tensor:
    out = torch.empty(sizes, dtype=scale.dtype, device=scale.device).contiguous(
        memory_format=memory_format_of(channels_last))
    n = out.numel()
    gv = grad_values.to(scale.dtype).contiguous()
    if n:
        _sign_unpack[(triton.cdiv(n, block),)](codes, scale.reshape(1), gv, out, n, n // sizes[0],
                                               F64=scale.dtype == torch.float64, BLOCK=block)
    return out
