"""Input rules shared by every loss: images, ranges and the affine map to the network's input.

Images are (B, C, H, W) floating tensors with C = 3, or C = 1 (grayscale, replicated to three
identical RGB channels before normalisation). ``input_range`` says what the caller's pixel values
span, e.g. (0, 1) or (-1, 1); the map to ImageNet-normalised network input is folded into one
per-channel affine x * scale + shift. No value checks run unless ``check_range=True``: reading
min/max would force a host-device sync on every call.

Images must also match the module they go into (``check_module_match``): same device as its weights,
and the weights' dtype, or under ``torch.autocast`` either that or the autocast dtype (autocast casts
both sides inside each convolution). Comparing dtypes and devices reads no values: no sync.

Also here because every layer takes them from here: the argument checks shared by losses, ops and
``perfloss.pgn`` (``check_same``) and the batch reductions (``reduce``, ``REDUCTIONS``).
"""
from typing import Sequence, Tuple

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REDUCTIONS = ("mean", "sum", "none")


def check_input_range(input_range) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be a pair (low, high) such as (0, 1) or (-1, 1), got {input_range!r}") from None
    if not hi > lo:
        raise ValueError(f"input_range must have high > low, got {input_range!r}")
    return lo, hi


def pixel_affine(input_range, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, 3, 1, 1), float64, mapping pixels in input_range to network input
    ``(p - mean) / std`` of p in [0, 1] (ImageNet's statistics by default; the peers' own in
    :mod:`perfloss.compat`)."""
    lo, hi = check_input_range(input_range)
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    if mean.numel() != 3 or std.numel() != 3:
        raise ValueError(f"mean and std must have 3 values (one per RGB channel), got {mean.numel()} and {std.numel()}")
    if not bool((std > 0).all()):
        raise ValueError(f"std must be positive, got {std.tolist()}")
    # ((x - lo) / (hi - lo) - mean) / std
    scale = 1.0 / ((hi - lo) * std)
    shift = (-lo / (hi - lo) - mean) / std
    return scale.view(1, 3, 1, 1), shift.view(1, 3, 1, 1)


def check_image(name: str, x, *, allow_grayscale: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16, bfloat16 or float64), got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    channels = (1, 3) if allow_grayscale else (3,)
    if x.shape[1] not in channels:
        raise ValueError(f"{name} must have {' or '.join(map(str, channels))} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got shape {tuple(x.shape)}")


def check_module_match(name: str, x: torch.Tensor, module: torch.nn.Module, module_name: str):
    """``x`` can enter ``module`` (called ``module_name`` in the message): same device as its first
    parameter, and its dtype (or, under autocast on x's device, the autocast dtype). Returns the
    weights' dtype (None for a module without parameters, which takes anything)."""
    weight = next(iter(module.parameters()), None)
    if weight is None:
        return None
    if x.device != weight.device:
        raise ValueError(
            f"{name} is on {x.device} but the {module_name} module's weights are on {weight.device}: move the module "
            f"with `{module_name}.to({str(x.device)!r})`, or the images with `{name}.to({str(weight.device)!r})`")
    device_type = x.device.type
    if x.dtype == weight.dtype or (torch.is_autocast_enabled(device_type)
                                   and x.dtype == torch.get_autocast_dtype(device_type)):
        return weight.dtype
    raise TypeError(
        f"{name} is {x.dtype} but the {module_name} module's weights are {weight.dtype}: convert the module with "
        f"`{module_name}.to({x.dtype})`, or keep the module and images in {weight.dtype} and run it under "
        f"`torch.autocast({device_type!r}, dtype=...)` for reduced precision (or cast the images with "
        f"`{name}.to({weight.dtype})`)")


def check_pair(input, target, *, same_shape: bool = True) -> None:
    check_image("input", input)
    check_image("target", target)
    check_same("input", input, "target", target, shape=same_shape)


def check_values(name: str, x: torch.Tensor, input_range: Sequence[float]) -> None:
    """The opt-in check (check_range=True): finite values inside input_range. Syncs with the device."""
    lo, hi = input_range
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    tol = 1e-3 * (hi - lo)
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - tol or x_max > hi + tol:
        raise ValueError(
            f"{name} values span [{x_min:.4g}, {x_max:.4g}] but input_range is ({lo:g}, {hi:g}); "
            "pass the range your images use, e.g. input_range=(-1, 1)"
        )


def to_network(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Grayscale to RGB, then the per-channel affine to the network's input."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x * scale.to(x.dtype) + shift.to(x.dtype)


def check_same(name0: str, x0: torch.Tensor, name1: str, x1: torch.Tensor, *, shape: bool = True) -> None:
    """The two tensors share dtype and device (and shape, unless ``shape=False``)."""
    if shape and x0.shape != x1.shape:
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
