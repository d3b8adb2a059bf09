"""Triton kernels for perfloss::gram: G = F F^T (/ (C H W)) per sample, split-K, upper triangle only.

F is the (C, N = H*W) view of a sample, read through its strides, so NCHW (stride_c = N,
stride_k = 1) and channels_last (stride_c = 1, stride_k = C) inputs need no copy; other layouts are
made dense first. Pass 1 launches one program per (upper-triangle tile (i <= j), K split, sample):
each accumulates its K range of F_i F_j^T in fp32 with tl.dot and stores it in a workspace
(SPLIT, B, C, C) — only upper tiles are written. Pass 2 sums the splits in a fixed order
(deterministic, no atomics), mirrors (i, j) -> (min, max), scales and casts. At shallow layers
C is small and N large: a plain bmm has B * (C/128)^2 output tiles for the whole GPU, the split
gives every SM work, and skipping the lower tiles halves the FLOPs and reads.

fp32 inputs use TF32 tensor cores only when torch.backends.cuda.matmul.allow_tf32 says so (torch's
bmm follows the same flag), IEEE fp32 otherwise; fp16/bf16 use tensor cores with fp32 accumulation
(under the interpreter they are upcast first, its bf16 dot being wrong); float64 stays float64.
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import acc_dtype, dense, interpreting, triton_acc


def _configs():
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 3), (8, 3), (4, 4), (8, 2))]


@triton.autotune(configs=_configs(), key=["C", "N", "BM", "BK", "K_ITERS"])
@triton.jit
def _gram_partial_kernel(x_ptr, ws_ptr, tile_i_ptr, tile_j_ptr, B, C, N, stride_b, stride_c, stride_k,
                         ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                         BM: tl.constexpr, BK: tl.constexpr, K_ITERS: tl.constexpr):
    t = tl.program_id(0)
    sp = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    ti = tl.load(tile_i_ptr + t).to(tl.int64)
    tj = tl.load(tile_j_ptr + t).to(tl.int64)
    ri = ti * BM + tl.arange(0, BM).to(tl.int64)
    rj = tj * BM + tl.arange(0, BM).to(tl.int64)
    mi = ri < C
    mj = rj < C
    base = x_ptr + b * stride_b
    acc = tl.zeros([BM, BM], dtype=ACC)
    k0 = sp * (K_ITERS * BK)
    for it in range(K_ITERS):
        k = k0 + it * BK + tl.arange(0, BK).to(tl.int64)
        mk = k < N
        a = tl.load(base + ri[:, None] * stride_c + k[None, :] * stride_k, mask=mi[:, None] & mk[None, :], other=0.0)
        bt = tl.load(base + rj[:, None] * stride_c + k[None, :] * stride_k, mask=mj[:, None] & mk[None, :], other=0.0)
        if UPCAST:
            a = a.to(ACC)
            bt = bt.to(ACC)
        acc = tl.dot(a, tl.trans(bt), acc, input_precision=PRECISION, out_dtype=ACC)
    out = ws_ptr + (sp * B + b) * C * C
    tl.store(out + ri[:, None] * C + rj[None, :], acc, mask=mi[:, None] & mj[None, :])


@triton.jit
def _gram_reduce_kernel(ws_ptr, out_ptr, B, C, scale, SPLIT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    m = idx < C * C
    i = idx // C
    j = idx % C
    src = tl.minimum(i, j) * C + tl.maximum(i, j)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for sp in range(SPLIT):
        acc += tl.load(ws_ptr + (sp * B + b) * C * C + src, mask=m, other=0.0)
    tl.store(out_ptr + b * C * C + idx, (acc * scale).to(out_ptr.dtype.element_ty), mask=m)


def dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def upcast(dtype: torch.dtype) -> bool:
    """Load low-precision inputs as fp32 before tl.dot (the interpreter's bf16 dot is wrong)."""
    return dtype in (torch.float16, torch.bfloat16) and interpreting()


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def _plan(B: int, C: int, N: int, elt: int, device: torch.device):
    """Tile size BM, K block BK, K blocks per program K_ITERS and the number of splits.

    Enough splits for about four programs per SM, but never so many that the fp32 workspace
    (split * B * C * C * 4 bytes, L2-resident on H100-class parts) outgrows half the features' bytes.
    """
    BM = max(16, min(triton.next_power_of_2(C), 64 if C <= 64 else 128))
    BK = 32 if interpreting() else 64
    n_t = triton.cdiv(C, BM)
    tiles = n_t * (n_t + 1) // 2
    k_blocks = triton.cdiv(N, BK)
    if interpreting():
        want_split = 2  # exercise the split-K path with few programs
    else:
        want_split = max(1, triton.cdiv(4 * _sm_count(device), tiles * B))
        want_split = max(1, min(want_split, (N * elt) // (8 * C)))
    k_iters = triton.next_power_of_2(max(1, triton.cdiv(k_blocks, want_split)))
    split = triton.cdiv(k_blocks, k_iters)
    return BM, BK, k_iters, split


_TILE_CACHE = {}


def _upper_tiles(n_t: int, device: torch.device):
    key = (n_t, str(device))
    if key not in _TILE_CACHE:
        pairs = [(i, j) for i in range(n_t) for j in range(i, n_t)]
        ti = torch.tensor([p[0] for p in pairs], dtype=torch.int32, device=device)
        tj = torch.tensor([p[1] for p in pairs], dtype=torch.int32, device=device)
        _TILE_CACHE[key] = (ti, tj)
    return _TILE_CACHE[key]


def gram_into(features: torch.Tensor, out: torch.Tensor, scale: float) -> torch.Tensor:
    """Write scale * F F^T of every sample into ``out`` (B, C, C), contiguous, any float dtype."""
    x = dense(features)
    B, C, H, W = x.shape
    N = H * W
    stride_b, stride_c = x.stride(0), x.stride(1)
    stride_k = x.stride(3)  # NCHW: 1; channels_last: C (H and W merge in both dense layouts)
    BM, BK, k_iters, split = _plan(B, C, N, x.element_size(), x.device)
    acc = triton_acc(x.dtype)
    ws = torch.empty((split, B, C, C), dtype=acc_dtype(x.dtype), device=x.device)
    ti, tj = _upper_tiles(triton.cdiv(C, BM), x.device)
    _gram_partial_kernel[(ti.numel(), split, B)](
        x, ws, ti, tj, B, C, N, stride_b, stride_c, stride_k,
        ACC=acc, UPCAST=upcast(x.dtype), PRECISION=dot_precision(x.dtype), BM=BM, BK=BK, K_ITERS=k_iters)
    block = 4096 if interpreting() else 1024
    _gram_reduce_kernel[(triton.cdiv(C * C, block), B)](ws, out, B, C, scale, SPLIT=split, ACC=acc, BLOCK=block)
    return out


def gram(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Gram matrices (B, C, C) in the features' dtype — the contract of perfloss::gram."""
    B, C, H, W = features.shape
    out = torch.empty((B, C, C), dtype=features.dtype, device=features.device)
    return gram_into(features, out, 1.0 / (C * H * W) if normalize else 1.0)
