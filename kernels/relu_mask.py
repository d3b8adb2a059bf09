"""Triton kernels for perfloss::relu_mask (ReLU/LeakyReLU + 1-bit packed mask) and its backward.

Each program handles BLOCK bytes of mask = 8 * BLOCK elements as a (BLOCK, 8) tile of the tensor in
memory order (NCHW-contiguous or channels_last: the raw buffer order). 64-bit offsets; values are
converted to fp32 (fp64 stays fp64) before arithmetic; the mask bit is x > 0.
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import dense, packed_bytes


@triton.jit
def _relu_mask_fwd(x_ptr, y_ptr, m_ptr, n, n_keep, slope, PLAIN: tl.constexpr, F64: tl.constexpr,
                   BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    bit = tl.arange(0, 8)
    offs = byte[:, None] * 8 + bit[None, :]
    inb = offs < n
    x = tl.load(x_ptr + offs, mask=inb, other=0.0)
    if F64:
        xf = x
    else:
        xf = x.to(tl.float32)
    pos = xf > 0
    if PLAIN:
        y = tl.where(pos | (xf != xf), xf, 0.0)
    else:
        y = tl.where(pos, xf, xf * slope)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=inb)
    keep_bits = pos & (offs < n_keep)
    packed = tl.sum(keep_bits.to(tl.int32) << bit[None, :], axis=1)
    tl.store(m_ptr + byte, packed.to(tl.uint8), mask=byte * 8 < n_keep)


@triton.jit
def _relu_mask_bwd(g_ptr, m_ptr, o_ptr, n, slope, PLAIN: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    bit = tl.arange(0, 8)
    offs = byte[:, None] * 8 + bit[None, :]
    inb = offs < n
    m = tl.load(m_ptr + byte, mask=byte * 8 < n, other=0).to(tl.int32)
    on = ((m[:, None] >> bit[None, :]) & 1) != 0
    g = tl.load(g_ptr + offs, mask=inb, other=0.0)
    if F64:
        gf = g
    else:
        gf = g.to(tl.float32)
    if PLAIN:
        out = tl.where(on, gf, 0.0)
    else:
        out = tl.where(on, gf, gf * slope)
    tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=inb)


def relu_mask(x: torch.Tensor, negative_slope: float, keep: int, block: int = 1024):
    """(activation(x), mask) — the contract of perfloss::relu_mask."""
    x = dense(x)
    y = torch.empty_like(x)
    return y, _relu_mask_into(x, y, negative_slope, keep, block)


def relu_mask_(x: torch.Tensor, negative_slope: float, keep: int, block: int = 1024):
    """x becomes activation(x) (each element is read before it is written, by the same program); returns
    the mask — the contract of perfloss::relu_mask_ (x is dense, the op's wrapper checks)."""
    return _relu_mask_into(x, x, negative_slope, keep, block)


def _relu_mask_into(x, y, negative_slope, keep, block):
    n = x.numel()
    n_keep = keep * (x[0].numel() if x.shape[0] else 0)
    mask = torch.empty(packed_bytes(n_keep, 1), dtype=torch.uint8, device=x.device)
    grid = (triton.cdiv(triton.cdiv(n, 8), block),)
    if n:
        _relu_mask_fwd[grid](x, y, mask, n, n_keep, float(negative_slope), PLAIN=negative_slope == 0.0,
                             F64=x.dtype == torch.float64, BLOCK=block)
    return mask


def relu_mask_backward(grad: torch.Tensor, mask: torch.Tensor, negative_slope: float, block: int = 1024):
    """grad where the mask bit is set, negative_slope * grad elsewhere — perfloss::relu_mask_backward."""
    grad = dense(grad)
    n = grad.numel()
    out = torch.empty_like(grad)
    grid = (triton.cdiv(triton.cdiv(n, 8), block),)
    if n:
        _relu_mask_bwd[grid](grad, mask, out, n, float(negative_slope), PLAIN=negative_slope == 0.0,
                             F64=grad.dtype == torch.float64, BLOCK=block)
    return out
