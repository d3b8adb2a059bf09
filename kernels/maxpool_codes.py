"""Triton kernels for perfloss::maxpool_codes (window argmax as packed 2/4/8-bit codes) and un-routing.

Forward: each program handles BLOCK bytes of codes = BLOCK * PER output elements (in the output's memory
order: NCHW, or NHWC for channels_last, so that neighbouring lanes read neighbouring inputs), reads
its windows through the input's strides, writes the max through the output's strides and packs the
codes; ties and NaN resolve as in eager (first maximum, NaN wins). Backward: scatter-add of each
output gradient (in the codes' order) to its argmax with atomics into an fp32 (fp64) buffer laid out
as the gradient, since 3x3 stride-2 windows overlap; the sum order can differ from eager's in the
last bit.
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import (acc_dtype, code_bits, memory_format_of, packed_bytes, pool_output_size,
                                     triton_acc, work_channels_last)


@triton.jit
def _digits(e, r3, r2, r1):
    """The four indices of flat index e of a dense 4-D tensor whose dims, innermost last, have sizes
    (-, r1, r2, r3)."""
    d3 = e % r3
    t = e // r3
    d2 = t % r2
    t = t // r2
    return t // r1, t % r1, d2, d3


@triton.jit
def _unflatten(e, C, H, W, CL: tl.constexpr):
    """(b, c, h, w) of element e of an (n, C, H, W) tensor's memory order: NCHW, or NHWC when CL."""
    if CL:
        b, h, w, c = _digits(e, C, W, H)
    else:
        b, c, h, w = _digits(e, W, H, C)
    return b, c, h, w


@triton.jit
def _maxpool_codes_fwd(x_ptr, y_ptr, c_ptr, n_all, n_keep, C, H, W, OH, OW,
                       xs0, xs1, xs2, xs3, ys0, ys1, ys2, ys3,
                       KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                       BITS: tl.constexpr, PER: tl.constexpr, ACC: tl.constexpr, CL: tl.constexpr,
                       BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    j = tl.arange(0, PER)
    e = byte[:, None] * PER + j[None, :]
    inb = e < n_all
    b, c, oh, ow = _unflatten(e, C, OH, OW, CL)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    base = b * xs0 + c * xs1
    best = tl.full((BLOCK, PER), float("-inf"), ACC)
    code = tl.full((BLOCK, PER), -1, tl.int32)
    for i in tl.static_range(KH):
        for k in tl.static_range(KW):
            ih = h0 + i * DH
            iw = w0 + k * DW
            valid = inb & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + base + ih * xs2 + iw * xs3, mask=valid, other=float("-inf")).to(ACC)
            first = valid & (code < 0)
            upd = valid & ((v > best) | (v != v))
            code = tl.where(first | upd, i * KW + k, code)
            best = tl.where(upd, v, best)
    tl.store(y_ptr + b * ys0 + c * ys1 + oh * ys2 + ow * ys3, best.to(y_ptr.dtype.element_ty), mask=inb)
    code = tl.where((e < n_keep) & (code >= 0), code, 0)
    packed = tl.sum(code << (BITS * j[None, :]), axis=1)
    tl.store(c_ptr + byte, packed.to(tl.uint8), mask=byte * PER < n_keep)


@triton.jit
def _maxpool_unroute(g_ptr, c_ptr, o_ptr, n, C, H, W, OH, OW, gs0, gs1, gs2, gs3, os0, os1, os2, os3,
                     KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                     DH: tl.constexpr, DW: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, CL: tl.constexpr,
                     BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    e = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inb = e < n
    b, c, oh, ow = _unflatten(e, C, OH, OW, CL)
    shift = (BITS * (e % PER)).to(tl.int32)
    code = (tl.load(c_ptr + e // PER, mask=inb, other=0).to(tl.int32) >> shift) & ((1 << BITS) - 1)
    ih = oh * SH - PH + (code // KW) * DH
    iw = ow * SW - PW + (code % KW) * DW
    g = tl.load(g_ptr + b * gs0 + c * gs1 + oh * gs2 + ow * gs3, mask=inb, other=0.0)
    g = g.to(o_ptr.dtype.element_ty)
    tl.atomic_add(o_ptr + b * os0 + c * os1 + ih * os2 + iw * os3, g, mask=inb)


def maxpool_codes(x, kernel, stride, padding, dilation, ceil_mode, keep, block: int = 256):
    """(max_pool2d(x, ...), packed window codes) — the contract of perfloss::maxpool_codes."""
    b, c, h, w = x.shape
    oh = pool_output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    cl = work_channels_last(x)
    y = torch.empty((b, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=memory_format_of(cl))
    bits = code_bits(kernel[0] * kernel[1])
    per = 8 // bits
    n_all, n_keep = b * c * oh * ow, keep * c * oh * ow
    codes = torch.empty(packed_bytes(n_keep, bits), dtype=torch.uint8, device=x.device)
    if n_all:
        grid = (triton.cdiv(triton.cdiv(n_all, per), block),)
        _maxpool_codes_fwd[grid](x, y, codes, n_all, n_keep, c, h, w, oh, ow, *x.stride(), *y.stride(),
                                 KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0],
                                 PW=padding[1], DH=dilation[0], DW=dilation[1], BITS=bits, PER=per,
                                 ACC=triton_acc(x.dtype), CL=cl, BLOCK=block)
    return y, codes


def maxpool_unroute(grad, codes, input_hw, kernel, stride, padding, dilation, block: int = 1024):
    """Each output gradient added at its argmax — the contract of perfloss::maxpool_unroute."""
    b, c, oh, ow = grad.shape
    h, w = input_hw
    bits = code_bits(kernel[0] * kernel[1])
    cl = work_channels_last(grad)  # the codes' order, and the result's layout
    out = torch.empty((b, c, h, w), dtype=acc_dtype(grad.dtype), device=grad.device,
                      memory_format=memory_format_of(cl)).zero_()
    n = grad.numel()
    if n:
        _maxpool_unroute[(triton.cdiv(n, block),)](grad, codes, out, n, c, h, w, oh, ow, *grad.stride(), *out.stride(),
                                                  KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0],
                                                  PW=padding[1], DH=dilation[0], DW=dilation[1], BITS=bits,
                                                  PER=8 // bits, CL=cl, BLOCK=block)
    return out.to(grad.dtype)
