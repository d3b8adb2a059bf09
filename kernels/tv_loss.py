"""Triton kernel for perfloss::tv_loss: per-sample total variation and its gradient in one launch.

Layout: x is made dense NCHW or channels_last (whichever it is closest to); the kernel takes the
element strides of the h and w neighbours (W and 1 in NCHW, W*C and C in NHWC), so one kernel
serves both. Every program owns BLOCK consecutive elements of one sample, computes the forward
differences that start at them (value partials, one per direction, added per sample in a fixed
order) and their gradient from the differences that start or end at them; neighbours are re-read
from cache, so DRAM sees x once and the gradient once. 64-bit offsets, fp32 accumulation.
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import acc_dtype, interpreting, memory_format_of, triton_acc, work_channels_last


def _configs():
    if interpreting():
        return [triton.Config({"BLOCK": 4096}, num_warps=4)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((1024, 4), (2048, 8), (4096, 8))]


@triton.autotune(configs=_configs(), key=["L", "L1", "GRAD"], reset_to_zero=["part_ptr"])
@triton.jit
def _tv_kernel(x_ptr, g_ptr, part_ptr, L, H, W, s_h, s_w, n_blocks, gh, gw,
               L1: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0).to(tl.int64)  # the long axis first: grid axis 1 stops at 65535
    s = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < L
    h = (offs // s_h) % H
    w = (offs // s_w) % W
    base = x_ptr + s * L
    x = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
    has_dn = mask & (h + 1 < H)
    has_rt = mask & (w + 1 < W)
    dh = tl.where(has_dn, tl.load(base + offs + s_h, mask=has_dn, other=0.0).to(ACC) - x, 0.0)
    dw = tl.where(has_rt, tl.load(base + offs + s_w, mask=has_rt, other=0.0).to(ACC) - x, 0.0)
    if L1:
        ph = tl.sum(tl.abs(dh), axis=0)
        pw = tl.sum(tl.abs(dw), axis=0)
    else:
        ph = tl.sum(dh * dh, axis=0)
        pw = tl.sum(dw * dw, axis=0)
    tl.store(part_ptr + (s * n_blocks + blk) * 2, ph)
    tl.store(part_ptr + (s * n_blocks + blk) * 2 + 1, pw)
    if GRAD:
        has_up = mask & (h > 0)
        has_lf = mask & (w > 0)
        uh = tl.where(has_up, x - tl.load(base + offs - s_h, mask=has_up, other=0.0).to(ACC), 0.0)
        uw = tl.where(has_lf, x - tl.load(base + offs - s_w, mask=has_lf, other=0.0).to(ACC), 0.0)
        if L1:
            g = (tl.where(uh > 0, 1.0, tl.where(uh < 0, -1.0, 0.0)) - tl.where(dh > 0, 1.0, tl.where(dh < 0, -1.0, 0.0))) * gh
            g += (tl.where(uw > 0, 1.0, tl.where(uw < 0, -1.0, 0.0)) - tl.where(dw > 0, 1.0, tl.where(dw < 0, -1.0, 0.0))) * gw
        else:
            g = (uh - dh) * gh + (uw - dw) * gw
        tl.store(g_ptr + s * L + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


def tv_loss(x: torch.Tensor, kind: str, compute_grad: bool):
    """(values (B,), grad like x or an empty placeholder) — the contract of perfloss::tv_loss."""
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind must be one of ('l1', 'l2'), got {kind!r}")
    B, C, H, W = x.shape
    if H < 2 or W < 2:
        raise ValueError(f"x must be at least 2x2 for total variation, got {H}x{W}")
    cl = work_channels_last(x)
    fmt = memory_format_of(cl)
    xc = x.contiguous(memory_format=fmt)
    vdtype = acc_dtype(x.dtype)
    grad = torch.empty_like(x) if compute_grad else x.new_empty((0,))
    work = grad
    if compute_grad and not grad.is_contiguous(memory_format=fmt):
        work = torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
    L = C * H * W
    s_h, s_w = (W * C, C) if cl else (W, 1)
    nh, nw = C * (H - 1) * W, C * H * (W - 1)
    l1 = kind == "l1"
    min_block = min(c.kwargs["BLOCK"] for c in _configs())
    n_blocks = triton.cdiv(L, min_block)
    part = torch.zeros((B, n_blocks, 2), dtype=vdtype, device=x.device)
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK"]), B)  # noqa: E731
    _tv_kernel[grid](xc, work if compute_grad else xc, part, L, H, W, s_h, s_w, n_blocks,
                     (1.0 if l1 else 2.0) / nh, (1.0 if l1 else 2.0) / nw, L1=l1, GRAD=compute_grad,
                     ACC=triton_acc(x.dtype))
    sums = part.sum(dim=1)
    values = sums[:, 0] / nh + sums[:, 1] / nw
    if compute_grad and work is not grad:
        grad.copy_(work)
    return values, grad
