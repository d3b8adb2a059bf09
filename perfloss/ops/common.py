"""What the value-and-gradient ops (feature_distance, style_loss, tv_loss) share: argument checks,
the gradient placeholder, their fake kernel and their one autograd rule."""
import torch

from perfloss.kernels.common import acc_dtype


def check_features(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def empty_grad(like: torch.Tensor) -> torch.Tensor:
    """The placeholder returned in place of a gradient that was not asked for."""
    return like.new_empty((0,))


def laid_out_like(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of ``torch.empty_like(like)``, which is what the fake kernels promise."""
    out = torch.empty_like(like)
    return t if t.stride() == out.stride() else out.copy_(t)


def fake_values_and_grad(x: torch.Tensor, compute_grad: bool):
    """Fake outputs of a value-and-gradient op: per-sample values (B,) and the gradient's shape."""
    values = x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))
    return values, (torch.empty_like(x) if compute_grad else empty_grad(x))


def register_fused_grad_autograd(op) -> None:
    """Autograd for an op ``op(x, *args, compute_grad) -> (values (B,), d sum(values) / d x)``.

    When the op computed the gradient, backward keeps it and nothing else. When it did not (a caller
    asked for values only and differentiates anyway), backward keeps the inputs and calls the op
    again with ``compute_grad=True``. Only ``x`` gets a gradient.
    """

    def setup_context(ctx, inputs, output):
        ctx.recompute = not inputs[-1]
        if ctx.recompute:
            ctx.tensor_slots = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
            ctx.inputs = [None if i in ctx.tensor_slots else a for i, a in enumerate(inputs)]
            ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_slots))
        else:
            ctx.save_for_backward(output[1])
        ctx.num_inputs = len(inputs)

    def backward(ctx, grad_values, _grad_of_grad):
        if ctx.recompute:
            args = list(ctx.inputs)
            for i, t in zip(ctx.tensor_slots, ctx.saved_tensors):
                args[i] = t
            grad = op(*args[:-1], True)[1]
        else:
            (grad,) = ctx.saved_tensors
        return (grad_values.to(grad.dtype).view(-1, 1, 1, 1) * grad,) + (None,) * (ctx.num_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)
