"""Fast inference copy of a perceptual gradient network.

:func:`fold` returns an eval-only module computing the same ``(proxy, grad)`` as ``pgn.eval()``:

- every BatchNorm is folded into the convolution before it (eval-mode BN is an affine map);
- the input's range mapping and ImageNet normalisation are folded into the first convolution:
  conv(W, pad0(a*x + c)) = conv(a*W, pad0(x)) + conv(W, pad0(c)), and the second term is a bias map
  that is constant inside the image and differs only on the 1-pixel border (zero padding happens in
  normalised space); it is computed once per image size and cached. What remains of the input stage is
  the concatenation of y_hat and y, written straight into channels_last by the op ``perfloss::pgn_input``
  (one pass; Triton on CUDA);
- channels_last memory format (the fast layout for oneDNN and cuDNN convolutions);
- optional bf16/fp16 body (``dtype``); the output still computes in fp32 and returns y_hat's dtype;
- the fused output op ``perfloss::pgn_output`` (sigmoid output: sigmoid, de-normalise, proxy, gradient
  in one kernel; Triton on CUDA);
- optional CUDA graphs (``cuda_graph=True``; one :class:`perfloss.cuda_graphs.Recording` per input
  shape/dtype, outputs cloned from its static buffers).
"""
import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from perfloss.cuda_graphs import Recording
from perfloss.ops.pgn_input import pgn_input
from perfloss.ops.pgn_output import pgn_output

from .outputs import apply_output, grad_coefficient, sigmoid_offsets
from .model import PerceptualGradientNetwork, check_images
from .networks import ConvBNAct


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to bn(conv(x)) for eval-mode ``bn`` (computed in float64)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                              device=w.device)
    inv = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    fused = fused.to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_((w * inv.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_(((b - bn.running_mean.detach().double()) * inv + bn.bias.detach().double())
                         .to(conv.weight.dtype))
    return fused


class NormalizedInputConv(nn.Module):
    """conv(W, pad0(x * scale + shift)) computed as conv(W * scale, pad0(x)) + a cached border-bias map."""

    def __init__(self, conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("only plain zero-padded convolutions can absorb the input normalisation")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        w = conv.weight.detach().double()
        self.weight = nn.Parameter((w * scale.double().view(1, -1, 1, 1)).to(conv.weight.dtype), requires_grad=False)
        self.register_buffer("orig_weight", conv.weight.detach().clone())
        self.register_buffer("shift", shift.detach().reshape(-1).clone())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        self.register_buffer("bias", bias.clone())
        self._bias_maps: Dict[Tuple, torch.Tensor] = {}

    def bias_map(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        cached = self._bias_maps.get(key)
        if cached is None:
            const = self.shift.double().to(device).view(1, -1, 1, 1).expand(1, self.shift.numel(), h, w)
            m = F.conv2d(const, self.orig_weight.double().to(device), self.bias.double().to(device),
                         self.stride, self.padding, self.dilation)
            cached = m.to(dtype).contiguous(memory_format=torch.channels_last)
            self._bias_maps[key] = cached
        return cached

    def forward(self, x):
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation)
        return y + self.bias_map(x.shape[-2], x.shape[-1], x.device, y.dtype)

    def _apply(self, fn, *args, **kwargs):
        self._bias_maps = {}
        return super()._apply(fn, *args, **kwargs)


class InferencePGN(nn.Module):
    """Eval-only PGN; ``forward(y_hat, y) -> (proxy, grad)`` without autograd. Built by :func:`fold`."""

    def __init__(self, body: nn.Module, config: dict, dtype: Optional[torch.dtype], channels_last: bool,
                 cuda_graph: bool, fused_output: bool):
        super().__init__()
        self.body = body
        self.config = dict(config)
        self.output = config["output"]
        self.grad_scale = config["grad_scale"]
        self.input_range = tuple(config["input_range"])
        self.dtype = dtype
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph
        self.fused_output = fused_output and self.output == "sigmoid"
        lo, hi = self.input_range
        gain, offset = sigmoid_offsets(lo, hi - lo)
        self.gain = gain
        self.register_buffer("offset", offset)
        # the normalisation lives in the first conv: the input op only concatenates (identity affine)
        self.register_buffer("input_scale", torch.ones(6))
        self.register_buffer("input_shift", torch.zeros(6))
        self._graphs: Dict[Tuple, Recording] = {}

    def train(self, mode: bool = True):
        """Always stays in eval mode (BatchNorm is folded; train the original network instead), so a
        parent module's ``.train()`` (e.g. a model holding a ProxyTargetLoss) does not fail."""
        return super().train(False)

    def _run(self, y_hat: torch.Tensor, y: torch.Tensor):
        body_dtype = self.dtype or y_hat.dtype
        if self.channels_last:  # concat + layout change (+ dtype cast) in one pass
            x = pgn_input(y_hat, y, self.input_scale, self.input_shift, body_dtype)
        else:
            x = torch.cat([y_hat, y], dim=1).to(body_dtype)
        out = self.body(x)
        lo, hi = self.input_range
        if self.fused_output:
            coef = grad_coefficient(y_hat.shape, self.grad_scale)
            return pgn_output(out, y_hat, self.offset, self.gain, coef)
        return apply_output(self.output, out.to(y_hat.dtype), y_hat, lo, hi - lo, self.grad_scale)

    def _run_graphed(self, y_hat, y):
        key = (tuple(y_hat.shape), y_hat.dtype, y_hat.device)
        recording = self._graphs.get(key)
        if recording is None:
            recording = self._graphs[key] = Recording(lambda a, b: (self._run(a, b), None), (y_hat, y))
        proxy, grad = recording((y_hat, y))
        return proxy.clone(), grad.clone()

    @torch.no_grad()
    def forward(self, y_hat: torch.Tensor, y: torch.Tensor):
        check_images(y_hat, y)
        if self.cuda_graph and y_hat.is_cuda:
            return self._run_graphed(y_hat, y)
        return self._run(y_hat, y)


def fold(pgn: PerceptualGradientNetwork, dtype: Optional[torch.dtype] = None, channels_last: bool = True,
         cuda_graph: bool = False, fused_output: bool = True) -> InferencePGN:
    """Eval-only copy of ``pgn`` with BatchNorm and input normalisation folded (see module docstring)."""
    if not isinstance(pgn, PerceptualGradientNetwork):
        raise TypeError(f"pgn must be a PerceptualGradientNetwork, got {type(pgn).__name__}")
    if not pgn.calibrated:
        raise RuntimeError("grad_scale='auto' is not calibrated yet: train or calibrate_grad_scale() first")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"dtype must be a floating dtype or None, got {dtype}")
    body = copy.deepcopy(pgn.body).eval()
    first = True
    for unit in [m for m in body.modules() if isinstance(m, ConvBNAct)]:
        conv = fold_conv_bn(unit.conv, unit.bn)
        if first:
            conv = NormalizedInputConv(conv, pgn.in_scale.reshape(-1), pgn.in_shift.reshape(-1))
            first = False
        unit.conv = conv
        unit.bn = nn.Identity()
    for p in body.parameters():
        p.requires_grad_(False)
    if dtype is not None:
        body = body.to(dtype)
    if channels_last:
        body = body.to(memory_format=torch.channels_last)
    return InferencePGN(body, pgn.config(), dtype, channels_last, cuda_graph, fused_output).eval()
