"""Triton kernels for perfloss::style_loss: values sum_ij (G - T)^2 and the gradient in one sequence.

Three launches, nothing kept but the gradient:
1. the split-K upper-triangle Gram of kernels/gram.py, into an fp32 (B, C, C) buffer, normalised;
2. ``_style_diff_kernel``: D = G - T, per-row-block partial sums of D^2 (added per sample in a
   fixed order) and S = 2 (D + D^T) / (C H W), symmetric, fp32;
3. ``_style_grad_kernel`` (only with compute_grad): grad = S F, tiled (BM channels x BN pixels) with
   tl.dot over channel chunks, written through the features' strides in their dtype.
F is read through its strides (NCHW or channels_last without a copy; other layouts are made dense).
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import acc_dtype, dense, interpreting, triton_acc
from perfloss.kernels.gram import dot_precision, gram_into


def _grad_configs():
    if interpreting():
        return [triton.Config({"BN": 128}, num_warps=4, num_stages=1)]
    return [triton.Config({"BN": n}, num_warps=w, num_stages=s)
            for n, w, s in ((64, 4, 3), (128, 4, 3), (128, 8, 3), (256, 8, 3))]


@triton.jit
def _style_diff_kernel(g_ptr, t_ptr, s_ptr, part_ptr, C, t_sb, t_si, t_sj, n_iblk, gscale,
                       ACC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, N_J: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    iblk = tl.program_id(1).to(tl.int64)
    i = iblk * BI + tl.arange(0, BI).to(tl.int64)
    mi = i < C
    gb = g_ptr + b * C * C
    tb = t_ptr + b * t_sb
    part = tl.zeros([BI], dtype=ACC)
    for jc in range(N_J):
        j = jc * BJ + tl.arange(0, BJ).to(tl.int64)
        m = mi[:, None] & (j < C)[None, :]
        d = tl.load(gb + i[:, None] * C + j[None, :], mask=m, other=0.0) \
            - tl.load(tb + i[:, None] * t_si + j[None, :] * t_sj, mask=m, other=0.0).to(ACC)
        dt = tl.load(gb + j[None, :] * C + i[:, None], mask=m, other=0.0) \
            - tl.load(tb + j[None, :] * t_si + i[:, None] * t_sj, mask=m, other=0.0).to(ACC)
        part += tl.sum(d * d, axis=1)
        tl.store(s_ptr + b * C * C + i[:, None] * C + j[None, :], (d + dt) * gscale, mask=m)
    tl.store(part_ptr + b * n_iblk + iblk, tl.sum(part, axis=0))


@triton.autotune(configs=_grad_configs(), key=["C", "N", "BM", "BJ"])
@triton.jit
def _style_grad_kernel(s_ptr, x_ptr, g_ptr, C, N, stride_b, stride_c, stride_k,
                       ACC: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr,
                       N_J: tl.constexpr, BN: tl.constexpr):
    nblk = tl.program_id(0).to(tl.int64)  # the long axis first: grid axis 1 stops at 65535
    iblk = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    i = iblk * BM + tl.arange(0, BM).to(tl.int64)
    n = nblk * BN + tl.arange(0, BN).to(tl.int64)
    mi = i < C
    mn = n < N
    xb = x_ptr + b * stride_b
    sb = s_ptr + b * C * C
    acc = tl.zeros([BM, BN], dtype=ACC)
    for jc in range(N_J):
        j = jc * BJ + tl.arange(0, BJ).to(tl.int64)
        mj = j < C
        s = tl.load(sb + i[:, None] * C + j[None, :], mask=mi[:, None] & mj[None, :], other=0.0)
        f = tl.load(xb + j[:, None] * stride_c + n[None, :] * stride_k, mask=mj[:, None] & mn[None, :], other=0.0)
        acc = tl.dot(s, f.to(ACC), acc, input_precision=PRECISION, out_dtype=ACC)
    out = g_ptr + b * stride_b + i[:, None] * stride_c + n[None, :] * stride_k
    tl.store(out, acc.to(g_ptr.dtype.element_ty), mask=mi[:, None] & mn[None, :])


def style_loss(features: torch.Tensor, target_gram: torch.Tensor, compute_grad: bool):
    """(values (B,), grad like features or an empty placeholder) — the contract of perfloss::style_loss."""
    x = dense(features)
    B, C, H, W = x.shape
    N = H * W
    vdtype = acc_dtype(x.dtype)
    acc = triton_acc(x.dtype)
    G = gram_into(x, torch.empty((B, C, C), dtype=vdtype, device=x.device), 1.0 / (C * N))
    T = target_gram
    t_sb = 0 if T.shape[0] == 1 else T.stride(0)
    S = torch.empty((B, C, C), dtype=vdtype, device=x.device)
    BI = 16 if not interpreting() else max(16, min(triton.next_power_of_2(C), 128))
    BJ = max(16, min(triton.next_power_of_2(C), 128 if interpreting() else 64))
    n_iblk = triton.cdiv(C, BI)
    part = torch.empty((B, n_iblk), dtype=vdtype, device=x.device)
    _style_diff_kernel[(B, n_iblk)](G, T, S, part, C, t_sb, T.stride(1), T.stride(2), n_iblk, 2.0 / (C * N),
                                    ACC=acc, BI=BI, BJ=BJ, N_J=triton.cdiv(C, BJ))
    values = part.sum(dim=1)
    if not compute_grad:
        return values, features.new_empty((0,))
    grad = torch.empty_like(features)
    work = grad
    if grad.stride() != x.stride():
        work = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    BM = max(16, min(triton.next_power_of_2(C), 128 if interpreting() else 64))
    BJg = max(16, min(triton.next_power_of_2(C), 128 if interpreting() else 32))
    grid = lambda meta: (triton.cdiv(N, meta["BN"]), triton.cdiv(C, BM), B)  # noqa: E731
    _style_grad_kernel[grid](S, x, work, C, N, x.stride(0), x.stride(1), x.stride(3),
                             ACC=acc, PRECISION=dot_precision(x.dtype), BM=BM, BJ=BJg, N_J=triton.cdiv(C, BJg))
    if work is not grad:
        grad.copy_(work)
    return values, grad
