"""Triton kernel for a PGN's input stage (op ``perfloss::pgn_input``).

One pass: read y_hat and y (N, 3, H, W, NCHW-contiguous), apply a per-channel affine map
(x * scale[c] + shift[c]: the range mapping and ImageNet normalisation, or the identity when the
normalisation is folded into the first convolution) and write the concatenation (N, 6, H, W) directly
in channels_last layout, the layout the convolutions want. 64-bit offsets, masked tail, inputs
loaded in their own dtype and converted to fp32 before the arithmetic, output in ``out_dtype``.
"""
import torch
import triton
import triton.language as tl

from perfloss.kernels.common import interpreting


@triton.jit
def _pgn_input_kernel(a_ptr, b_ptr, scale_ptr, shift_ptr, out_ptr, n_elements, hw,
                      C_IN: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # channels_last output index
    mask = idx < n_elements
    c = idx % (2 * C_IN)
    pix = idx // (2 * C_IN)  # n * hw + spatial position
    n = pix // hw
    s = pix % hw
    src = n * (C_IN * hw) + (c % C_IN) * hw + s
    from_a = c < C_IN
    va = tl.load(a_ptr + src, mask=mask & from_a, other=0.0).to(tl.float32)
    vb = tl.load(b_ptr + src, mask=mask & (c >= C_IN), other=0.0).to(tl.float32)
    v = tl.where(from_a, va, vb)
    scale = tl.load(scale_ptr + c, mask=mask, other=1.0)
    shift = tl.load(shift_ptr + c, mask=mask, other=0.0)
    tl.store(out_ptr + idx, (v * scale + shift).to(out_ptr.dtype.element_ty), mask=mask)


def pgn_input(y_hat: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """Launch the kernel; returns the (N, 2C, H, W) channels_last input of the network in ``out_dtype``."""
    n, c, h, w = y_hat.shape
    y_hat, y = y_hat.contiguous(), y.contiguous()
    scale = scale.to(device=y_hat.device, dtype=torch.float32).contiguous()
    shift = shift.to(device=y_hat.device, dtype=torch.float32).contiguous()
    out = torch.empty((n, 2 * c, h, w), dtype=out_dtype, device=y_hat.device,
                      memory_format=torch.channels_last)
    numel = out.numel()
    if numel == 0:
        return out
    block = 8192 if interpreting() else 1024  # the interpreter pays per program: fewer, larger blocks
    _pgn_input_kernel[(triton.cdiv(numel, block),)](y_hat, y, scale, shift, out, numel, h * w,
                                                     C_IN=c, BLOCK=block)
    return out
