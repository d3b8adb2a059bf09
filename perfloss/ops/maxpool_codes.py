"""perfloss::maxpool_codes — max pooling that keeps each window's argmax as a 2/4/8-bit code.

``maxpool_codes(x, kernel, stride, padding, dilation, ceil_mode, keep) -> (y, codes)``: ``y`` is
``max_pool2d(x, ...)`` (in ``x``'s working layout: channels_last or contiguous) and ``codes`` holds,
for every output element of the first ``keep`` samples, the position ``kh_i * kw + kw_i`` of the
maximum inside its window, packed at :func:`perfloss.kernels.common.code_bits` bits (2 bits for 2x2
windows, 4 for 3x3), instead of eager's int64 indices. The codes follow ``y``'s memory order (NHWC
for channels_last, NCHW otherwise), as the ReLU masks do (:mod:`perfloss.ops.relu_mask`), so that
every kernel walks both in one order.
Ties and NaN resolve as in eager PyTorch (first maximum in row-major window order; NaN wins, and
an Inf is a maximum like any other), so ``y`` and the routed gradient equal eager's bit for bit,
NaN and Inf included.

``maxpool_unroute(grad, codes, input_hw, kernel, stride, padding, dilation) -> grad_in`` routes
each output gradient back to its argmax, accumulating where windows overlap (3x3 stride 2):
exactly max_pool2d's backward. ``grad`` must be in the layout the codes were packed in (that of the
forward's ``y``: channels_last or contiguous; its working layout is read as the codes' order), and
``grad_in`` has that layout.

Implementations: the ``*_reference`` functions below, C++ ``csrc/maxpool_codes.cpp`` (CPU), CUDA C++
``csrc/cuda/maxpool_codes.cu`` and Triton ``kernels/maxpool_codes.py`` (CUDA; per-element math shared with the CPU
kernel in ``csrc/lean_math.h``; the CUDA C++ un-routing gathers without atomics and, for 16-bit dtypes, adds
overlapping windows' gradients in float32 and rounds once, as eager CUDA does); see :mod:`perfloss.ops.library`.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

from perfloss.kernels.common import (code_bits, memory_format_of, packed_bytes, pair, pool_output_size,
                                     work_channels_last)
from perfloss.ops import library
from perfloss.ops.bitpack import from_memory_flat, pack, unpack


def _window_origin(n_out, s, p, device):
    return torch.arange(n_out, device=device) * s - p


def maxpool_codes_reference(x: torch.Tensor, kernel: List[int], stride: List[int], padding: List[int],
                            dilation: List[int], ceil_mode: bool, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    y, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    idx = idx[:keep]
    w = x.shape[3]
    oh, ow = y.shape[2:]
    h0 = _window_origin(oh, stride[0], padding[0], x.device).view(-1, 1)
    w0 = _window_origin(ow, stride[1], padding[1], x.device).view(1, -1)
    code = ((idx // w - h0) // dilation[0]) * kernel[1] + (idx % w - w0) // dilation[1]
    cl = work_channels_last(x)
    in_order = code.permute(0, 2, 3, 1) if cl else code  # y's memory order
    return y.contiguous(memory_format=memory_format_of(cl)), pack(in_order.reshape(-1), code_bits(kernel[0] * kernel[1]))


def maxpool_unroute_reference(grad: torch.Tensor, codes: torch.Tensor, input_hw: List[int], kernel: List[int],
                              stride: List[int], padding: List[int], dilation: List[int]) -> torch.Tensor:
    b, c, oh, ow = grad.shape
    h, w = input_hw
    cl = work_channels_last(grad)
    code = from_memory_flat(unpack(codes, code_bits(kernel[0] * kernel[1]), grad.numel()).long(), grad.shape, cl)
    h0 = _window_origin(oh, stride[0], padding[0], grad.device).view(-1, 1)
    w0 = _window_origin(ow, stride[1], padding[1], grad.device).view(1, -1)
    ih = h0 + (code // kernel[1]) * dilation[0]
    iw = w0 + (code % kernel[1]) * dilation[1]
    idx = ih * w + iw
    out = grad.new_zeros((b * c, h * w))
    out.scatter_add_(1, idx.reshape(b * c, oh * ow), grad.reshape(b * c, oh * ow))
    return out.view(b, c, h, w).contiguous(memory_format=memory_format_of(cl))


maxpool_codes_op = library.define("maxpool_codes", maxpool_codes_reference,
                                  triton=library.triton_kernel("maxpool_codes", "maxpool_codes"))
maxpool_unroute_op = library.define("maxpool_unroute", maxpool_unroute_reference,
                                    triton=library.triton_kernel("maxpool_codes", "maxpool_unroute"))


@maxpool_codes_op.register_fake
def _(x, kernel, stride, padding, dilation, ceil_mode, keep):
    b, c, h, w = x.shape
    oh = pool_output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = x.new_empty((b, c, oh, ow)).contiguous(memory_format=memory_format_of(work_channels_last(x)))
    return y, x.new_empty((packed_bytes(keep * c * oh * ow, code_bits(kernel[0] * kernel[1])),), dtype=torch.uint8)


@maxpool_unroute_op.register_fake
def _(grad, codes, input_hw, kernel, stride, padding, dilation):
    return grad.new_empty((grad.shape[0], grad.shape[1], input_hw[0], input_hw[1])).contiguous(
        memory_format=memory_format_of(work_channels_last(grad)))


def _window(kernel, stride):
    k = pair(kernel)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else pair(stride)
    code_bits(k[0] * k[1])  # raises for windows too large to code
    return k, s


def maxpool_codes(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, keep=-1):
    """(max_pool2d(x, ...), packed argmax codes of the first ``keep`` samples; all when keep < 0)."""
    k, s = _window(kernel, stride)
    keep = x.shape[0] if keep < 0 else keep
    return maxpool_codes_op(x, k, s, pair(padding), pair(dilation), bool(ceil_mode), int(keep))


def maxpool_unroute(grad, codes, input_hw, kernel, stride=None, padding=0, dilation=1):
    k, s = _window(kernel, stride)
    return maxpool_unroute_op(grad, codes, pair(input_hw), k, s, pair(padding), pair(dilation))
