"""Argument checks and small helpers shared by the loss-head ops."""
import torch

REDUCTIONS = ("mean", "sum", "none")


def value_dtype(dtype: torch.dtype) -> torch.dtype:
    """Loss values are accumulated and returned in float32 (float64 for float64 inputs)."""
    return torch.promote_types(dtype, torch.float32)


def check_features(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def check_same(name0: str, x0: torch.Tensor, name1: str, x1: torch.Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(f"{name0} and {name1} must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if x0.dtype != x1.dtype:
        raise TypeError(f"{name0} and {name1} must have the same dtype, got {x0.dtype} and {x1.dtype}")
    if x0.device != x1.device:
        raise ValueError(f"{name0} and {name1} must be on the same device, got {x0.device} and {x1.device}")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-sample loss values (B,) like torch.nn losses do."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def empty_grad(like: torch.Tensor) -> torch.Tensor:
    """The placeholder returned in place of a gradient that was not asked for."""
    return like.new_empty((0,))
