"""What every kernel and the ops that call them agree on: layouts, accumulator dtypes, code widths, sizes.

The ground floor: plain Python and PyTorch, no Triton import, so the plain-PyTorch references in
``perfloss/ops`` use the same rules as the Triton kernels beside this file (the C++ kernels mirror
them in ``csrc/common.h``).

Layout: a kernel works on a dense tensor, NCHW-contiguous or channels_last (NHWC), chosen by
:func:`work_channels_last`; bit-packed masks and codes are stored in that *memory order*.
"""
import os
from typing import List, Sequence, Union

import torch


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1), not on a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def pair(v: Union[int, Sequence[int]]) -> List[int]:
    """An int or a pair of ints as a list of two ints (the convention of torch's pooling arguments)."""
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def work_channels_last(x: torch.Tensor) -> bool:
    """The dense layout a kernel works ``x`` in: channels_last when ``x`` is stored that way (and is not
    also plain contiguous) or is closest to it (channels innermost), else NCHW-contiguous."""
    if x.dim() != 4 or x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    return x.stride(1) == 1 and x.shape[1] > 1


def memory_format_of(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its working layout (itself when it already is)."""
    return x.contiguous(memory_format=memory_format_of(work_channels_last(x)))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and loss-value) dtype: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def triton_acc(dtype: torch.dtype):
    """:func:`acc_dtype` as a Triton dtype (imports Triton, so only kernels call it)."""
    import triton.language as tl

    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes holding ``numel`` codes of ``bits`` bits (1, 2, 4 or 8), ``8 // bits`` to a byte."""
    per = 8 // bits
    return (numel + per - 1) // per


def code_bits(window_positions: int) -> int:
    """Bits per max-pool window code: 2 for up to 4 window positions, 4 for up to 16, 8 for up to 256."""
    for bits in (2, 4, 8):
        if window_positions <= (1 << bits):
            return bits
    raise ValueError(f"max-pool windows of {window_positions} positions need more than 8 bits per code")


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one dimension, as torch.nn.functional.max_pool2d computes it."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out
