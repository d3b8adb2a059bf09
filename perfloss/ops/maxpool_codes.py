"""perfloss::maxpool_codes — max pooling that keeps each window's argmax as a 2/4/8-bit code.

``maxpool_codes(x, kernel, stride, padding, dilation, ceil_mode, keep) -> (y, codes)``: ``y`` is
``max_pool2d(x, ...)`` and ``codes`` holds, for every output element of the first ``keep`` samples
(NCHW order), the position ``kh_i * kw + kw_i`` of the maximum inside its window, packed at
:func:`code_bits` bits (2 bits for 2x2 windows, 4 for 3x3), instead of eager's int64 indices.
Ties and NaN resolve as in eager PyTorch (first maximum in row-major window order; NaN wins).

``maxpool_unroute(grad, codes, input_hw, kernel, stride, padding, dilation) -> grad_in`` routes
each output gradient back to its argmax, accumulating where windows overlap (3x3 stride 2):
exactly max_pool2d's backward. ``grad_in`` is contiguous (NCHW).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

from perfloss.ops import dispatch
from perfloss.ops.bitpack import pack, packed_bytes, unpack


def code_bits(kernel_elems: int) -> int:
    """Bits per window code: 2 for up to 4 window positions, 4 for up to 16, 8 for up to 256."""
    for bits in (2, 4, 8):
        if kernel_elems <= (1 << bits):
            return bits
    raise ValueError(f"max-pool windows of {kernel_elems} positions need more than 8 bits per code")


def output_size(size, k, s, p, d, ceil_mode):
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    out = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _window_origin(n_out, s, p, device):
    return torch.arange(n_out, device=device) * s - p


@dispatch.register("maxpool_codes", "reference", ("cpu", "cuda"))
def _reference(x, kernel, stride, padding, dilation, ceil_mode, keep):
    y, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    idx = idx[:keep]
    w = x.shape[3]
    oh, ow = y.shape[2:]
    h0 = _window_origin(oh, stride[0], padding[0], x.device).view(-1, 1)
    w0 = _window_origin(ow, stride[1], padding[1], x.device).view(1, -1)
    code = ((idx // w - h0) // dilation[0]) * kernel[1] + (idx % w - w0) // dilation[1]
    return y, pack(code.contiguous(), code_bits(kernel[0] * kernel[1]))


@dispatch.register("maxpool_unroute", "reference", ("cpu", "cuda"))
def _reference_unroute(grad, codes, input_hw, kernel, stride, padding, dilation):
    b, c, oh, ow = grad.shape
    h, w = input_hw
    code = unpack(codes, code_bits(kernel[0] * kernel[1]), grad.numel()).long().view(b, c, oh, ow)
    h0 = _window_origin(oh, stride[0], padding[0], grad.device).view(-1, 1)
    w0 = _window_origin(ow, stride[1], padding[1], grad.device).view(1, -1)
    ih = h0 + (code // kernel[1]) * dilation[0]
    iw = w0 + (code % kernel[1]) * dilation[1]
    idx = (ih * w + iw).view(b * c, oh * ow)
    out = grad.new_zeros((b * c, h * w))
    out.scatter_add_(1, idx, grad.reshape(b * c, oh * ow))
    return out.view(b, c, h, w)


def _cpp_forward(x, kernel, stride, padding, dilation, ceil_mode, keep):
    return dispatch.native_op("maxpool_codes_kernel")(x, kernel, stride, padding, dilation, ceil_mode, keep)


def _cpp_unroute(grad, codes, input_hw, kernel, stride, padding, dilation):
    return dispatch.native_op("maxpool_unroute_kernel")(grad, codes, input_hw, kernel, stride, padding, dilation)


def _triton_forward(x, kernel, stride, padding, dilation, ceil_mode, keep):
    from perfloss.kernels.maxpool_codes import maxpool_codes_forward
    return maxpool_codes_forward(x, kernel, stride, padding, dilation, ceil_mode, keep)


def _triton_unroute(grad, codes, input_hw, kernel, stride, padding, dilation):
    from perfloss.kernels.maxpool_codes import maxpool_unroute
    return maxpool_unroute(grad, codes, input_hw, kernel, stride, padding, dilation)


def _register_fast_paths():
    order = []
    if dispatch.triton_available():
        order.append(("triton", ("cuda", "cpu"), _triton_forward, _triton_unroute))
    if dispatch.native_op("maxpool_codes_kernel") is not None:
        order.append(("cpp", ("cpu",), _cpp_forward, _cpp_unroute))
    for impl, devices, fwd, bwd in order:
        dispatch.register("maxpool_codes", impl, devices)(fwd)
        dispatch.register("maxpool_unroute", impl, devices)(bwd)


_register_fast_paths()


@torch.library.custom_op("perfloss::maxpool_codes", mutates_args=())
def maxpool_codes_op(x: torch.Tensor, kernel: List[int], stride: List[int], padding: List[int],
                     dilation: List[int], ceil_mode: bool, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return dispatch.call("maxpool_codes", x, kernel, stride, padding, dilation, ceil_mode, keep)


@maxpool_codes_op.register_fake
def _(x, kernel, stride, padding, dilation, ceil_mode, keep):
    b, c, h, w = x.shape
    oh = output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
    y = x.new_empty((b, c, oh, ow)).contiguous(memory_format=fmt)
    n = keep * c * oh * ow
    return y, x.new_empty((packed_bytes(n, code_bits(kernel[0] * kernel[1])),), dtype=torch.uint8)


@torch.library.custom_op("perfloss::maxpool_unroute", mutates_args=())
def maxpool_unroute_op(grad: torch.Tensor, codes: torch.Tensor, input_hw: List[int], kernel: List[int],
                       stride: List[int], padding: List[int], dilation: List[int]) -> torch.Tensor:
    return dispatch.call("maxpool_unroute", grad, codes, input_hw, kernel, stride, padding, dilation)


@maxpool_unroute_op.register_fake
def _(grad, codes, input_hw, kernel, stride, padding, dilation):
    return grad.new_empty((grad.shape[0], grad.shape[1], input_hw[0], input_hw[1]))


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def maxpool_codes(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, keep=-1):
    """(max_pool2d(x, ...), packed argmax codes of the first ``keep`` samples; all when keep < 0)."""
    k = _pair(kernel)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride)
    keep = x.shape[0] if keep < 0 else keep
    code_bits(k[0] * k[1])
    return maxpool_codes_op(x, k, s, _pair(padding), _pair(dilation), bool(ceil_mode), int(keep))


def maxpool_unroute(grad, codes, input_hw, kernel, stride=None, padding=0, dilation=1):
    k = _pair(kernel)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride)
    return maxpool_unroute_op(grad, codes, _pair(input_hw), k, s, _pair(padding), _pair(dilation))
