"""perfloss::pgn_input — a PGN's input stage in one pass.

    x = cat([y_hat, y], dim=1) * scale[c] + shift[c]      ->  (N, 2C, H, W), channels_last, out_dtype

``scale``/``shift`` (2C values) carry the range mapping and ImageNet normalisation; the inference
copy folds those into its first convolution and passes the identity, so the op is then the
concatenation and the channels_last layout change, fused.

Elementwise: NaN and Inf pass through as in the formula.

Implementations: :func:`pgn_input_reference` (below), Triton ``kernels/pgn_input.py`` (CUDA, the
default) and CUDA C++ ``csrc/cuda/pgn_input.cu`` (CUDA, under ``library.use("cpp")``); see
:mod:`perfloss.ops.library`.
"""
import torch

from perfloss.ops import library

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def pgn_input_reference(y_hat: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                        out_dtype: torch.dtype) -> torch.Tensor:
    x = torch.cat([y_hat, y], dim=1).float()
    x = x * scale.to(x.device, torch.float32).view(1, -1, 1, 1) + shift.to(x.device, torch.float32).view(1, -1, 1, 1)
    return x.to(out_dtype).contiguous(memory_format=torch.channels_last)


pgn_input_op = library.define("pgn_input", pgn_input_reference,
                              triton=library.triton_kernel("pgn_input", "pgn_input"))


@pgn_input_op.register_fake
def _(y_hat, y, scale, shift, out_dtype):
    n, c, h, w = y_hat.shape
    return torch.empty((n, 2 * c, h, w), dtype=out_dtype, device=y_hat.device, memory_format=torch.channels_last)


def pgn_input(y_hat: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
              out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fused input stage; see the module docstring."""
    if y_hat.dim() != 4 or y.shape != y_hat.shape:
        raise ValueError(f"y_hat and y must be (N, C, H, W) of one shape, got {tuple(y_hat.shape)} and {tuple(y.shape)}")
    c2 = 2 * y_hat.shape[1]
    if scale.shape != (c2,) or shift.shape != (c2,):
        raise ValueError(f"scale and shift must have shape ({c2},), got {tuple(scale.shape)} and {tuple(shift.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    return pgn_input_op(y_hat, y, scale, shift, out_dtype)
