"""ProxyTargetLoss: train a generator on a perceptual gradient network's predicted gradient."""
import torch
import torch.nn as nn

from perfloss.inputs import REDUCTIONS, reduce

from .model import check_images


class _InjectGradient(torch.autograd.Function):
    """Returns the given per-sample values; backward sends grad_output[n] * g[n] into y_hat."""

    @staticmethod
    def forward(ctx, y_hat, g, values):
        ctx.save_for_backward(g)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):
        (g,) = ctx.saved_tensors
        scale = grad_values.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
        return g * scale, None, None


class ProxyTargetLoss(nn.Module):
    """``loss = ProxyTargetLoss(pgn)(y_hat, y)``: backward puts the PGN-predicted gradient into y_hat.

    The PGN (a :class:`PerceptualGradientNetwork` or its :func:`~perfloss.pgn.fold`-ed inference copy)
    runs under ``no_grad`` on ``y_hat.detach()``; no graph is built through it and it is never trained
    by this loss. The value per sample is the proxy regression the gradient comes from,

        L_n = ||y_hat_n - sg(p_n)||^2 / (C H W s) = mean((y_hat_n - p_n)^2) / s,

    whose gradient with respect to y_hat_n is exactly the PGN's g_n = 2 (y_hat_n - p_n) / (C H W s)
    (perfloss injects g itself, so the gradient is bit-exact, not recomputed). The value is a
    distance to the proxy, not an estimate of the teacher loss.

    ``reduction``: ``"sum"`` (default: d loss / d y_hat == g exactly, per sample, like the teacher's
    per-sample gradient the PGN was distilled from), ``"mean"`` (gradient g / N) or ``"none"``
    (per-sample values of shape (N,)).

    The PGN runs in eval mode (BatchNorm with its running statistics; the loss switches it back to eval
    on every call, so a PGN that a :class:`~perfloss.pgn.PGNTrainer` keeps training can be shared) and
    under ``no_grad``: no gradient ever reaches its parameters from this loss.
    """

    def __init__(self, pgn: nn.Module, reduction: str = "sum"):
        super().__init__()
        if not isinstance(pgn, nn.Module):
            raise TypeError(f"pgn must be a PerceptualGradientNetwork (or its inference copy), got {type(pgn).__name__}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.pgn = pgn.eval()  # a frozen tool here: BatchNorm uses its running statistics
        self.reduction = reduction
        self.last_proxy = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.pgn.eval()
        return self

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(y_hat, y)
        if self.pgn.training:
            self.pgn.eval()
        with torch.no_grad():
            proxy, g = self.pgn(y_hat.detach(), y.detach())
            scale = getattr(self.pgn, "grad_scale")
            values = (y_hat.detach() - proxy).pow(2).flatten(1).mean(1) / scale
        self.last_proxy = proxy
        per_sample = _InjectGradient.apply(y_hat, g.to(y_hat.dtype), values.to(y_hat.dtype))
        return reduce(per_sample, self.reduction)
