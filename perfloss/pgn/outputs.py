"""Outputs of a perceptual gradient network: how the network's output parameterises (proxy image,
predicted gradient).

Spaces. The user's images live in ``input_range`` (lo, hi); the network sees them mapped to [0, 1]
and ImageNet-normalised. Nikulin et al. write the default proxy as ``p = 1.1 * normalize(sigmoid(out))``
with ``p`` in the network's input space, i.e. ``normalize`` is the ImageNet normalisation
(x - mean) / std that the 6-channel input also went through: sigmoid(out) is an image in [0, 1],
normalising it puts it in the input's space, and the factor 1.1 (around the normalised origin, i.e. the
ImageNet mean colour) lets the proxy overshoot the valid range by 10 %. Mapped back to [0, 1] image space:

    p01 = std * 1.1 * (sigmoid(out) - mean) / std + mean = 1.1 * sigmoid(out) - 0.1 * mean,

and to the user's range: ``p = lo + (hi - lo) * p01``. perfloss then takes the predicted gradient in the
user's space (the space of the generator's output and of the teacher's gradient):

    g = 2 * (y_hat - p) / (C * H * W * s),   equivalently   p = y_hat - (s * C * H * W / 2) * g,

the gradient of (1 / (C H W s)) * ||y_hat - sg(p)||^2. (The paper's g lives in normalised space; the
per-channel std only rescales s, to which the paper reports insensitivity within an order of magnitude.)

Other outputs (as in the reference code): ``raw``: p01 = out; ``direct``: the network predicts
y_hat - p directly, p01 = y_hat01 - out / 512.
"""
from typing import Tuple

import torch

from perfloss.inputs import IMAGENET_MEAN

OUTPUTS = ("sigmoid", "raw", "direct")
SIGMOID_GAIN = 1.1
DIRECT_SCALE = 512.0


def grad_coefficient(shape, grad_scale: float) -> float:
    """2 / (C H W s): the factor turning y_hat - p into the predicted gradient."""
    c, h, w = shape[-3:]
    return 2.0 / (c * h * w * grad_scale)


def calibrate_grad_scale(y_hat: torch.Tensor, y: torch.Tensor, g_true: torch.Tensor) -> float:
    """The s that matches the proxy gradient's scale to a teacher's: s = 2 ||y_hat - y|| / (C H W ||g_true||)
    over the whole batch (pooled norms, float64).

    With this s the pixel difference read as a proxy residual, 2 (y_hat - y) / (C H W s), has exactly the
    norm of the teacher's gradient, i.e. a proxy at the target (p = y) already carries a gradient of the
    right magnitude, and the PGN only has to learn the direction. The paper's s = 0.025 is this
    calibration for its own teacher (an ImageNet VGG-19 at 224x224); for another teacher (random weights,
    another distance, other image sizes) the teacher gradient's norm differs, and a fixed s forces the
    network to reproduce y_hat almost exactly (or its gradient MSE prefers g -> 0) before any direction
    is learnt.
    """
    if y_hat.shape != y.shape or g_true.shape != y.shape:
        raise ValueError(f"y_hat, y and g_true must share one shape, got {tuple(y_hat.shape)}, {tuple(y.shape)}, "
                         f"{tuple(g_true.shape)}")
    c, h, w = y.shape[-3:]
    d = torch.linalg.vector_norm((y_hat.detach() - y.detach()).double())
    g = torch.linalg.vector_norm(g_true.detach().double())
    if not (float(d) > 0 and float(g) > 0 and torch.isfinite(d) and torch.isfinite(g)):
        raise ValueError("cannot calibrate grad_scale: y_hat == y or a zero/non-finite teacher gradient on this batch")
    return float(2.0 * d / (c * h * w * g))


def sigmoid_offsets(lo: float, span: float, channels: int = 3) -> Tuple[float, torch.Tensor]:
    """(gain, offset[c]) with p = gain * sigmoid(out) + offset[c] in the user's range."""
    if channels != len(IMAGENET_MEAN):
        raise ValueError(f"the sigmoid output needs {len(IMAGENET_MEAN)} channels, got {channels}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    gain = SIGMOID_GAIN * span
    offset = lo - span * (SIGMOID_GAIN - 1.0) * mean
    return gain, offset


def apply_output(output: str, out: torch.Tensor, y_hat: torch.Tensor, lo: float, span: float,
               grad_scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Differentiable (plain PyTorch) output: returns (proxy, grad) in the user's range and dtype."""
    out = out.to(y_hat.dtype)
    coef = grad_coefficient(y_hat.shape, grad_scale)
    if output == "sigmoid":
        gain, offset = sigmoid_offsets(lo, span, out.shape[1])
        proxy = gain * torch.sigmoid(out) + offset.to(out.device, out.dtype).view(1, -1, 1, 1)
    elif output == "raw":
        proxy = lo + span * out
    elif output == "direct":
        proxy = y_hat - span * out / DIRECT_SCALE
    else:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    grad = coef * (y_hat - proxy)
    return proxy, grad
