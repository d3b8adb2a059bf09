"""perfloss::pgn_output — the fused sigmoid output of a perceptual gradient network.

    proxy = gain * sigmoid(out) + offset[c]
    grad  = coef * (y_hat - proxy)

For the default sigmoid output, ``gain = 1.1 * (hi - lo)``, ``offset = lo - 0.1 * (hi - lo) * mean_imagenet``
and ``coef = 2 / (C H W s)`` (see :mod:`perfloss.pgn.outputs`). ``out`` may be bf16/fp16 (the math runs
in fp32). Both results have y_hat's dtype and out's working layout (``work_channels_last(out)``:
channels_last when the network's body runs in it, whatever y_hat's layout). Inference-only: the op has
no autograd formula (the PGN's training path uses the plain-PyTorch
:func:`perfloss.pgn.outputs.apply_output`).

Elementwise: NaN in ``out`` or ``y_hat`` gives NaN in the entries computed from it, as the formula
does; sigmoid maps +-Inf to 1 and 0.

Implementations: :func:`pgn_output_reference` (below), Triton ``kernels/pgn_output.py`` (CUDA, the
default) and CUDA C++ ``csrc/cuda/pgn_output.cu`` (CUDA, under ``library.use("cpp")``); see
:mod:`perfloss.ops.library`.
"""
from typing import Tuple

import torch

from perfloss.kernels.common import memory_format_of, work_channels_last
from perfloss.ops import library


def _output_format(out: torch.Tensor) -> torch.memory_format:
    """The layout of proxy and grad: out's working layout, the one the Triton kernel writes."""
    return memory_format_of(work_channels_last(out))


def pgn_output_reference(out: torch.Tensor, y_hat: torch.Tensor, offset: torch.Tensor, gain: float,
                         coef: float) -> Tuple[torch.Tensor, torch.Tensor]:
    p = gain * torch.sigmoid(out.float()) + offset.to(out.device, torch.float32).view(1, -1, 1, 1)
    g = coef * (y_hat.float() - p)
    fmt = _output_format(out)
    return p.to(y_hat.dtype).contiguous(memory_format=fmt), g.to(y_hat.dtype).contiguous(memory_format=fmt)


pgn_output_op = library.define("pgn_output", pgn_output_reference,
                               triton=library.triton_kernel("pgn_output", "pgn_output"))


@pgn_output_op.register_fake
def _(out, y_hat, offset, gain, coef):
    fmt = _output_format(out)
    return torch.empty_like(y_hat, memory_format=fmt), torch.empty_like(y_hat, memory_format=fmt)


def pgn_output(out: torch.Tensor, y_hat: torch.Tensor, offset: torch.Tensor, gain: float,
               coef: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(proxy, grad) = the fused sigmoid output; see the module docstring."""
    if out.dim() != 4:
        raise ValueError(f"out must have shape (N, C, H, W), got {tuple(out.shape)}")
    if y_hat.shape != out.shape:
        raise ValueError(f"y_hat must have the shape of out {tuple(out.shape)}, got {tuple(y_hat.shape)}")
    if offset.shape != (out.shape[1],):
        raise ValueError(f"offset must have shape ({out.shape[1]},), got {tuple(offset.shape)}")
    if not (out.is_floating_point() and y_hat.is_floating_point()):
        raise TypeError(f"out and y_hat must be floating point, got {out.dtype} and {y_hat.dtype}")
    return pgn_output_op(out, y_hat, offset, float(gain), float(coef))
