"""PerceptualGradientNetwork: predicts a perceptual loss's gradient from (generated, target)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from perfloss.backbones.weights import load_file
from perfloss.checkpoint import atomic_save
from perfloss.inputs import IMAGENET_MEAN, IMAGENET_STD, check_module_match, check_same

from .outputs import OUTPUTS, apply_output, calibrate_grad_scale
from .networks import ARCHS, build_body

CHECKPOINT_FORMAT = "perfloss.pgn"
CHECKPOINT_VERSION = 1
DEFAULT_GRAD_SCALE = {"resnet4": 0.025, "resnet6": 0.025, "resnet8": 0.025, "unet": 0.048}


def check_images(y_hat, y, *, names=("y_hat", "y"), module: Optional[nn.Module] = None) -> None:
    """Both are float (N, 3, H, W) tensors of one shape, dtype and device (and, given ``module``, the
    network's device and dtype: :func:`perfloss.inputs.check_module_match`)."""
    for name, t in zip(names, (y_hat, y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape (N, 3, H, W), got {tuple(t.shape)}")
    check_same(names[0], y_hat, names[1], y)
    if module is not None:
        check_module_match(names[0], y_hat, module, "pgn")


class PerceptualGradientNetwork(nn.Module):
    """A small network predicting the gradient of a perceptual loss (Nikulin et al. 2021).

    Args:
        arch: ``"resnet4" | "resnet6" | "resnet8" | "unet"`` (see :mod:`perfloss.pgn.networks`).
        output: how the network's output becomes the proxy p: ``"sigmoid"`` (default;
            p = 1.1 * normalize(sigmoid(out))), ``"raw"`` (p = out) or ``"direct"`` (the network predicts
            y_hat - p); see :mod:`perfloss.pgn.outputs`.
        grad_scale: s in g = 2 (y_hat - p) / (C H W s). ``None`` (default): the paper's fixed s, 0.025 for
            ResNets, 0.048 for the UNet (calibrated by the paper for an ImageNet VGG-19 at 224x224); a
            number: that s; ``"auto"``: calibrated once from the teacher by :meth:`calibrate_grad_scale`
            (:class:`~perfloss.pgn.PGNTrainer` does it on its first batch), so that the proxy gradient's
            scale matches the teacher's. Until calibrated, ``forward`` raises. A deviation from the paper,
            recommended for any other teacher (weights, distance, image size): see
            :func:`perfloss.pgn.outputs.calibrate_grad_scale`. Once calibrated, s is a plain number (saved
            as such in checkpoints and in ``config()``).
        input_range: the range of the images, ``(0, 1)`` or ``(-1, 1)`` (any lo < hi).

    ``forward(y_hat, y)`` returns ``(proxy, grad)``, both of y_hat's shape, in y_hat's range and dtype.
    :func:`perfloss.pgn.fold` makes the fast eval-only copy.
    """

    def __init__(self, arch: str = "resnet4", output: str = "sigmoid", grad_scale: Union[None, float, str] = None,
                 input_range: Tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if grad_scale is None:
            grad_scale = DEFAULT_GRAD_SCALE[arch]
        if grad_scale != "auto" and (not isinstance(grad_scale, (int, float)) or isinstance(grad_scale, bool)
                                     or not grad_scale > 0):
            raise ValueError(f"grad_scale must be a positive number, None or 'auto', got {grad_scale!r}")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"input_range must be (lo, hi) with lo < hi, got {input_range!r}")
        self.arch, self.output = arch, output
        # None until calibrated when grad_scale == "auto"
        self.grad_scale: Optional[float] = None if grad_scale == "auto" else float(grad_scale)
        self.grad_scale_mode = "auto" if grad_scale == "auto" else "fixed"
        self.input_range = (lo, hi)
        self.body = build_body(arch)
        # x_normalised = x * in_scale + in_shift, per channel, for the 6 stacked channels.
        std = torch.tensor(IMAGENET_STD * 2)
        mean = torch.tensor(IMAGENET_MEAN * 2)
        self.register_buffer("in_scale", (1.0 / ((hi - lo) * std)).view(1, 6, 1, 1), persistent=False)
        self.register_buffer("in_shift", (-(lo / (hi - lo)) / std - mean / std).view(1, 6, 1, 1), persistent=False)

    # -- configuration and checkpoints ------------------------------------------------------------
    def config(self) -> dict:
        return {"arch": self.arch, "output": self.output,
                "grad_scale": "auto" if self.grad_scale is None else self.grad_scale,
                "input_range": list(self.input_range)}

    @property
    def calibrated(self) -> bool:
        """False only for ``grad_scale="auto"`` before :meth:`calibrate_grad_scale`."""
        return self.grad_scale is not None

    def calibrate_grad_scale(self, y_hat: torch.Tensor, y: torch.Tensor, g_true: torch.Tensor) -> float:
        """Set s from a batch of generated images, targets and the teacher's per-sample gradients
        (:func:`perfloss.pgn.outputs.calibrate_grad_scale`); returns the new s. Works for any PGN (it
        overrides a fixed s too); the result is stored as a plain number."""
        check_images(y_hat, y)
        self.grad_scale = calibrate_grad_scale(y_hat, y, g_true)
        return self.grad_scale

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def save(self, path, **extra) -> None:
        """Write config + weights (+ JSON-like ``extra``) to ``path``; read back with :meth:`load`."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": self.config(),
                     "state_dict": state, "extra": extra}, path, keep_previous=False)

    @classmethod
    def load(cls, path, map_location="cpu") -> "PerceptualGradientNetwork":
        ckpt = load_file(path, "PGN checkpoint")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a perfloss PGN checkpoint (written by PerceptualGradientNetwork.save)")
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: unsupported PGN checkpoint version {ckpt.get('version')!r}")
        cfg = dict(ckpt["config"])
        if "head" in cfg:  # checkpoints written before "head" was renamed "output"
            cfg["output"] = cfg.pop("head")
        cfg["input_range"] = tuple(cfg["input_range"])
        net = cls(**cfg)
        net.load_state_dict(ckpt["state_dict"])  # strict: key mismatches are errors
        net.checkpoint_extra = ckpt.get("extra", {})
        return net.to(map_location)

    # -- forward ----------------------------------------------------------------------------------
    def normalize_input(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = torch.cat([y_hat, y], dim=1)
        return x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor):
        check_images(y_hat, y, module=self)
        if self.grad_scale is None:
            raise RuntimeError("grad_scale='auto' is not calibrated yet: call pgn.calibrate_grad_scale(y_hat, y, "
                               "g_true) first (PGNTrainer does this on its first batch)")
        out = self.body(self.normalize_input(y_hat, y))
        lo, hi = self.input_range
        return apply_output(self.output, out, y_hat, lo, hi - lo, self.grad_scale)
