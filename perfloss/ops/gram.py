"""perfloss::gram — Gram matrices of feature maps, G = F F^T (/ (C H W) when normalised).

F is a (C, H*W) view of each sample; G is (C, C), accumulated in float32 and returned in the
features' dtype. The backward needs F (as eager's bmm does): dF = (dG + dG^T) F / N.

NaN and Inf propagate as through eager's ``bmm``: a NaN in channel i makes row and column i of that
sample's Gram NaN; an Inf gives Inf (or NaN where it meets a zero or an opposite sign).

Implementations: :func:`gram_reference` (below), C++ ``csrc/gram.cpp`` (CPU), cuBLAS batched GEMM +
CUDA C++ epilogue ``csrc/cuda/gram.cu`` (CUDA, the default; TF32 as torch's matmuls) and Triton
``kernels/gram.py`` (CUDA, under ``library.use("triton")``); see :mod:`perfloss.ops.library`.
"""
import torch

from perfloss.kernels.common import acc_dtype
from perfloss.ops import library
from perfloss.ops.common import check_features


def gram_formula(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Plain-PyTorch Gram in float32 (float64 for float64) accumulation."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w).to(acc_dtype(features.dtype))
    g = torch.bmm(f, f.transpose(1, 2))
    return g / (c * h * w) if normalize else g


def gram_reference(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    return gram_formula(features, normalize).to(features.dtype)


gram_op = library.define("gram", gram_reference, triton=library.triton_kernel("gram", "gram"))


@gram_op.register_fake
def _(features, normalize):
    b, c = features.shape[:2]
    return features.new_empty((b, c, c))


def _setup_context(ctx, inputs, output):
    features, normalize = inputs
    ctx.save_for_backward(features)
    ctx.normalize = normalize


def _backward(ctx, grad_gram):
    (features,) = ctx.saved_tensors
    b, c, h, w = features.shape
    acc = acc_dtype(features.dtype)
    f = features.reshape(b, c, h * w).to(acc)
    sym = grad_gram.to(acc) + grad_gram.to(acc).transpose(1, 2)
    grad = torch.bmm(sym, f)
    if ctx.normalize:
        grad = grad / (c * h * w)
    return grad.reshape(features.shape).to(features.dtype), None


gram_op.register_autograd(_backward, setup_context=_setup_context)


def gram(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Gram matrices (B, C, C) of features (B, C, H, W); divided by C*H*W when ``normalize``."""
    check_features("features", features)
    return gram_op(features, normalize)
