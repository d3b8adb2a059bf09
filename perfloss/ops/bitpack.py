"""Bit packing in plain PyTorch, for the lean ops' references (the C++ and Triton kernels pack alike).

Codes of ``bits`` bits (1, 2, 4 or 8) are packed little-end first: element ``i`` of the flat
sequence lives in byte ``i // (8 // bits)`` at bit offset ``(i % (8 // bits)) * bits``. The flat
sequence is a tensor's *memory order* in its working layout (NCHW, or NHWC for channels_last; see
:func:`perfloss.kernels.common.work_channels_last`), so packing never copies an activation to
another layout.
"""
import torch

from perfloss.kernels.common import work_channels_last


def memory_flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-D tensor in the memory order of its working layout (a view when ``x`` is dense)."""
    if work_channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.contiguous().view(-1)


def from_memory_flat(flat: torch.Tensor, sizes, channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`memory_flat` for a tensor of logical ``sizes``."""
    if channels_last:
        n, c, h, w = sizes
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(sizes)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a flat integer tensor of codes < 2**bits into uint8 bytes."""
    per = 8 // bits
    codes = codes.reshape(-1).to(torch.uint8)
    pad = (-codes.numel()) % per
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (codes.view(-1, per) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes as uint8."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed.view(-1, 1) >> shifts) & mask).view(-1)[:numel]
