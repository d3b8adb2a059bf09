"""Triton kernels for perfloss::feature_distance: per-sample values and d/d f0 in one read of f0, f1.

Layout: f0 and f1 are made dense in f0's layout, NCHW-contiguous or channels_last (anything else is
copied by ``.contiguous(memory_format)``); the kernels take the channel and pixel strides, so one
kernel serves both. The gradient is written in that layout (and copied into a tensor laid out like
``torch.empty_like(f0)`` in the rare case where that differs, to match the op's fake kernel).

- mse / l1: every program streams BLOCK elements of one sample (NCHW and NHWC order a sample's
  C*H*W elements the same way) and writes one partial sum;
- cosine / lpips: every program owns BLOCK_P pixels of one sample. Up to 64 channels it holds the
  whole (C, BLOCK_P) tiles of f0 and f1 in registers and reads them once; beyond that it walks the
  channel columns in BLOCK_C chunks: norms first, then (lpips) the weighted value and
  <n0, upstream>, then the gradient; the chunks it re-reads are its own, still in L1/L2, so DRAM
  sees f0 and f1 once.
Partial sums are added per sample in a fixed order (deterministic). Offsets are 64-bit and fp32
accumulation is used for every input dtype (float64 stays float64).
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import acc_dtype, interpreting, memory_format_of, triton_acc, work_channels_last

KINDS = {"mse": 0, "l1": 1, "cosine": 2, "lpips": 3}
EPS = 1e-10


def _elementwise_configs():
    if interpreting():
        return [triton.Config({"BLOCK": 4096}, num_warps=4)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((1024, 4), (2048, 8), (4096, 8))]


def _normalized_configs():
    if interpreting():
        return [triton.Config({"BLOCK_P": 128}, num_warps=4)]
    return [triton.Config({"BLOCK_P": p}, num_warps=w) for p, w in ((32, 4), (64, 4), (128, 8))]


@triton.autotune(configs=_elementwise_configs(), key=["L", "KIND", "GRAD"], reset_to_zero=["part_ptr"])
@triton.jit
def _elementwise_kernel(a_ptr, b_ptr, g_ptr, part_ptr, L, n_blocks, gscale,
                        KIND: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0).to(tl.int64)  # the long axis first: grid axis 1 stops at 65535
    s = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < L
    base = s * L
    a = tl.load(a_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    d = a - b
    if KIND == 0:
        part = tl.sum(d * d, axis=0)
        g = d * gscale
    else:
        part = tl.sum(tl.abs(d), axis=0)
        g = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(ACC) * gscale
    tl.store(part_ptr + s * n_blocks + blk, part)
    if GRAD:
        tl.store(g_ptr + base + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_normalized_configs(), key=["C", "P", "KIND", "GRAD", "HAS_W"], reset_to_zero=["part_ptr"])
@triton.jit
def _normalized_kernel(a_ptr, b_ptr, g_ptr, w_ptr, part_ptr, C, P, stride_c, stride_p, n_blocks, inv_p, eps,
                       KIND: tl.constexpr, GRAD: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_C: tl.constexpr, N_CHUNKS: tl.constexpr, BLOCK_P: tl.constexpr):
    blk = tl.program_id(0).to(tl.int64)  # the long axis first: grid axis 1 stops at 65535
    s = tl.program_id(1).to(tl.int64)
    p = blk * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    pmask = p < P
    base = s * C * P
    cr = tl.arange(0, BLOCK_C).to(tl.int64)
    if N_CHUNKS == 1:
        # All channels of the block in registers: f0 and f1 are loaded once and never re-read.
        cmask = cr < C
        m = cmask[:, None] & pmask[None, :]
        offs = base + cr[:, None] * stride_c + p[None, :] * stride_p
        x = tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC)
        y = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC)
        r0 = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) + eps)
        r1 = 1.0 / tl.sqrt(tl.sum(y * y, axis=0) + eps)
        if KIND == 2:
            cs = tl.sum(x * y, axis=0) * r0 * r1
            part = tl.sum(tl.where(pmask, 1.0 - cs, 0.0), axis=0)
            if GRAD:
                g = (x * (r0 * cs)[None, :] - y * r1[None, :]) * (r0 * inv_p)[None, :]
                tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=m)
        else:
            if HAS_W:
                w = tl.load(w_ptr + cr, mask=cmask, other=0.0).to(ACC)[:, None]
            else:
                w = 1.0
            n0 = x * r0[None, :]
            d = n0 - y * r1[None, :]
            part = tl.sum(tl.where(pmask, tl.sum(w * d * d, axis=0), 0.0), axis=0)
            if GRAD:
                t = tl.sum(w * n0 * d, axis=0)
                g = (2.0 * inv_p * r0)[None, :] * (w * d - n0 * t[None, :])
                tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=m)
        tl.store(part_ptr + s * n_blocks + blk, part)
    else:
        s00 = tl.zeros([BLOCK_P], dtype=ACC)
        s11 = tl.zeros([BLOCK_P], dtype=ACC)
        s01 = tl.zeros([BLOCK_P], dtype=ACC)
        for ci in range(N_CHUNKS):
            c = ci * BLOCK_C + cr
            m = (c < C)[:, None] & pmask[None, :]
            offs = base + c[:, None] * stride_c + p[None, :] * stride_p
            x = tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC)
            y = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC)
            s00 += tl.sum(x * x, axis=0)
            s11 += tl.sum(y * y, axis=0)
            s01 += tl.sum(x * y, axis=0)
        r0 = 1.0 / tl.sqrt(s00 + eps)
        r1 = 1.0 / tl.sqrt(s11 + eps)
        if KIND == 2:
            cs = s01 * r0 * r1
            part = tl.sum(tl.where(pmask, 1.0 - cs, 0.0), axis=0)
            if GRAD:
                for ci in range(N_CHUNKS):
                    c = ci * BLOCK_C + cr
                    m = (c < C)[:, None] & pmask[None, :]
                    offs = base + c[:, None] * stride_c + p[None, :] * stride_p
                    x = tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC)
                    y = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC)
                    g = (x * (r0 * cs)[None, :] - y * r1[None, :]) * (r0 * inv_p)[None, :]
                    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=m)
        else:
            val = tl.zeros([BLOCK_P], dtype=ACC)
            t = tl.zeros([BLOCK_P], dtype=ACC)
            for ci in range(N_CHUNKS):
                c = ci * BLOCK_C + cr
                cmask = c < C
                m = cmask[:, None] & pmask[None, :]
                offs = base + c[:, None] * stride_c + p[None, :] * stride_p
                n0 = tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC) * r0[None, :]
                n1 = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC) * r1[None, :]
                if HAS_W:
                    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(ACC)[:, None]
                else:
                    w = 1.0
                d = n0 - n1
                val += tl.sum(w * d * d, axis=0)
                t += tl.sum(w * n0 * d, axis=0)
            part = tl.sum(tl.where(pmask, val, 0.0), axis=0)
            if GRAD:
                k = 2.0 * inv_p * r0
                for ci in range(N_CHUNKS):
                    c = ci * BLOCK_C + cr
                    cmask = c < C
                    m = cmask[:, None] & pmask[None, :]
                    offs = base + c[:, None] * stride_c + p[None, :] * stride_p
                    n0 = tl.load(a_ptr + offs, mask=m, other=0.0).to(ACC) * r0[None, :]
                    n1 = tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC) * r1[None, :]
                    if HAS_W:
                        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(ACC)[:, None]
                    else:
                        w = 1.0
                    g = k[None, :] * (w * (n0 - n1) - n0 * t[None, :])
                    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=m)
        tl.store(part_ptr + s * n_blocks + blk, part)


def feature_distance(f0: torch.Tensor, f1: torch.Tensor, kind: str, weight, compute_grad: bool):
    """(values (B,), grad like f0 or an empty placeholder) — the contract of perfloss::feature_distance."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    B, C, H, W = f0.shape
    P = H * W
    cl = work_channels_last(f0)
    fmt = memory_format_of(cl)
    a = f0.contiguous(memory_format=fmt)
    b = f1.contiguous(memory_format=fmt)
    vdtype = acc_dtype(f0.dtype)
    acc = triton_acc(f0.dtype)
    grad = torch.empty_like(f0) if compute_grad else f0.new_empty((0,))
    work = grad
    if compute_grad and not grad.is_contiguous(memory_format=fmt):
        work = torch.empty(f0.shape, dtype=f0.dtype, device=f0.device).contiguous(memory_format=fmt)
    g_arg = work if compute_grad else a  # never written when GRAD is False
    kid = KINDS[kind]
    if kid <= 1:
        L = C * P
        n_blocks = triton.cdiv(L, min(c.kwargs["BLOCK"] for c in _elementwise_configs()))
        part = torch.zeros((B, n_blocks), dtype=vdtype, device=f0.device)
        gscale = (2.0 if kid == 0 else 1.0) / L
        grid = lambda meta: (triton.cdiv(L, meta["BLOCK"]), B)  # noqa: E731
        _elementwise_kernel[grid](a, b, g_arg, part, L, n_blocks, gscale, KIND=kid, GRAD=compute_grad, ACC=acc)
        values = part.sum(dim=1) / L
    else:
        has_w = weight is not None
        w_arg = weight.reshape(-1).to(vdtype).contiguous() if has_w else a
        stride_c, stride_p = (1, C) if cl else (P, 1)
        block_c = min(triton.next_power_of_2(C), 64)  # up to 64 channels stay in registers
        n_blocks = triton.cdiv(P, min(c.kwargs["BLOCK_P"] for c in _normalized_configs()))
        part = torch.zeros((B, n_blocks), dtype=vdtype, device=f0.device)
        grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]), B)  # noqa: E731
        _normalized_kernel[grid](a, b, g_arg, w_arg, part, C, P, stride_c, stride_p, n_blocks, 1.0 / P, EPS,
                                 KIND=kid, GRAD=compute_grad, HAS_W=has_w, ACC=acc, BLOCK_C=block_c,
                                 N_CHUNKS=triton.cdiv(C, block_c))
        values = part.sum(dim=1) / P
    if compute_grad and work is not grad:
        grad.copy_(work)
    return values.to(vdtype), grad
