"""Triton kernel for the sigmoid output of a perceptual gradient network (op ``perfloss::pgn_output``).

One pass over the network output ``out`` and the generated image ``y_hat``:

    proxy = gain * sigmoid(out) + offset[c]        (sigmoid, ImageNet de-normalise, 1.1 gain, range)
    grad  = coef * (y_hat - proxy)                 (coef = 2 / (C H W s))

Elements are addressed with 64-bit offsets; the tail block is masked; inputs are loaded in their own
dtype (fp32, fp16 or bf16) and converted to fp32 before any arithmetic; outputs are stored in the
dtype of ``proxy``/``grad`` (y_hat's dtype). NCHW-contiguous and channels_last layouts are both
handled (only the channel index differs).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

from perfloss.kernels.common import interpreting, memory_format_of, work_channels_last


@triton.jit
def _pgn_output_kernel(out_ptr, y_ptr, offset_ptr, proxy_ptr, grad_ptr, n_elements, channels, hw,
                       gain, coef, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n_elements
    o = tl.load(out_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    yh = tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if CHANNELS_LAST:
        c = idx % channels
    else:
        c = (idx // hw) % channels
    off = tl.load(offset_ptr + c, mask=mask, other=0.0).to(tl.float32)
    p = gain * (1.0 / (1.0 + tl.exp(-o))) + off
    g = coef * (yh - p)
    tl.store(proxy_ptr + idx, p.to(proxy_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_ptr + idx, g.to(grad_ptr.dtype.element_ty), mask=mask)


def pgn_output(out: torch.Tensor, y_hat: torch.Tensor, offset: torch.Tensor, gain: float,
               coef: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel; returns (proxy, grad) in y_hat's dtype and out's working layout."""
    n, c, h, w = out.shape
    channels_last = work_channels_last(out)
    # one layout for all four tensors, so one flat index addresses the same element in each
    fmt = memory_format_of(channels_last)
    out = out.contiguous(memory_format=fmt)
    y_hat = y_hat.contiguous(memory_format=fmt)
    offset = offset.to(device=out.device, dtype=torch.float32).contiguous()
    proxy = torch.empty_like(y_hat, memory_format=fmt)
    grad = torch.empty_like(y_hat, memory_format=fmt)
    numel = out.numel()
    if numel == 0:
        return proxy, grad
    block = 8192 if interpreting() else 1024  # the interpreter pays per program: fewer, larger blocks
    grid = (triton.cdiv(numel, block),)
    _pgn_output_kernel[grid](out, y_hat, offset, proxy, grad, numel, c, h * w, float(gain), float(coef),
                             CHANNELS_LAST=channels_last, BLOCK=block)
    return proxy, grad
