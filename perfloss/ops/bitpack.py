"""Bit packing shared by the lean engine's ops (plain PyTorch reference helpers).

Codes of ``bits`` bits (1, 2, 4 or 8) are packed little-end first: element ``i`` of the flat
sequence lives in byte ``i // (8 // bits)`` at bit offset ``(i % (8 // bits)) * bits``. The flat
sequence is a tensor's *memory order*: NCHW for contiguous tensors, NHWC for channels_last ones
(see :func:`is_channels_last`), so packing never copies an activation to another layout.
"""
import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is stored channels_last (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def memory_flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-D view in memory order (a contiguous copy when it is neither layout)."""
    if is_channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.contiguous().view(-1)


def from_memory_flat(flat: torch.Tensor, sizes, channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`memory_flat` for a tensor of logical ``sizes``."""
    if channels_last:
        n, c, h, w = sizes
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(sizes)


def packed_bytes(numel: int, bits: int) -> int:
    per = 8 // bits
    return (numel + per - 1) // per


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
