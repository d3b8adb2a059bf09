"""LPIPS (Zhang et al. 2018) with the lpips package's linear weights, on perfloss's backbones.

The computation is the package's: scaling layer, channel-unit-normalised features, squared
difference, non-negative per-channel weights, spatial mean, sum over layers. One difference: the
normalisation puts its epsilon inside the square root, so the gradient stays finite where a
feature vector is zero (the package gives NaN there); elsewhere values agree to ~1e-7.
"""
import importlib.util
import os
from typing import List

import torch

from perfloss.backbones.weights import state_dict_argument
from perfloss.heads import TapHead
from perfloss.inputs import check_pair
from perfloss.ops.feature_distance import lpips_map
from perfloss.losses.base import BackboneLoss, build_backbone

# network -> (perfloss backbone, taps the lpips package reads)
NETS = {
    "alex": ("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5")),
    "vgg": ("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")),
    "squeeze": ("squeezenet1_1", ("relu1", "fire3", "fire5", "fire6", "fire7", "fire8", "fire9")),
}
# the v0.1 scaling layer: x' = (x - shift) / scale for inputs in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def packaged_lin_weights_path(net: str, version: str = "0.1") -> str:
    """The linear-weights file shipped inside the installed ``lpips`` package (not imported)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "LPIPS linear weights come from the lpips package: install it with "
            "`pip install --no-deps lpips==0.1.4`, or pass lin_weights=<path to its .pth>"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", f"v{version}", f"{net}.pth")
    if not os.path.exists(path):
        raise FileNotFoundError(f"the installed lpips package has no {path}")
    return path


def load_lin_weights(lin_weights, net: str, version: str, channels: List[int]) -> List[torch.Tensor]:
    """Per-layer (C,) weights from None (the lpips package's file), a path, or a state dict."""
    state = state_dict_argument(lin_weights, "lin_weights", lambda: packaged_lin_weights_path(net, version))
    expected = [f"lin{i}.model.1.weight" for i in range(len(channels))]
    if sorted(state) != sorted(expected):
        raise ValueError(f"lin_weights for net={net!r} must hold exactly the keys {expected}, got {sorted(state)}")
    weights = []
    for key, c in zip(expected, channels):
        w = state[key]
        if tuple(w.shape) != (1, c, 1, 1):
            raise ValueError(f"lin_weights[{key!r}] must have shape (1, {c}, 1, 1), got {tuple(w.shape)}")
        weights.append(w.float().reshape(c))
    return weights


class LPIPS(BackboneLoss):
    """Learned perceptual image patch similarity.

    Inputs are in [-1, 1] as in the lpips package; pass ``normalize=True`` for [0, 1] inputs.
    ``weights`` is the backbone's (as for every perfloss loss, ``"imagenet"`` is what LPIPS was
    trained on); ``lin_weights`` the linear layers' (None: the installed lpips package's file).
    ``reduction="none"`` gives the package's per-sample values as a (B,) tensor.
    """

    def __init__(self, net="alex", version="0.1", weights="imagenet", lin_weights=None, normalize=False,
                 reduction="mean", engine=None, check_range=False, tap_grad_dtype=None,
                 chunk_size=None):
        if net not in NETS:
            raise ValueError(f"net must be one of {tuple(NETS)}, got {net!r}")
        if version != "0.1":
            raise ValueError(f"version must be '0.1' (the weights the lpips package ships), got {version!r}")
        backbone_name, taps = NETS[net]
        backbone = build_backbone(backbone_name, taps, weights)
        lins = load_lin_weights(lin_weights, net, version, [backbone.tap_channels[t] for t in taps])
        heads = [TapHead(tap, "lpips", 1.0, lin) for tap, lin in zip(taps, lins)]
        input_range = (0.0, 1.0) if normalize else (-1.0, 1.0)
        lo, hi = input_range
        # pixels -> [-1, 1] -> (x - SHIFT) / SCALE, as one affine
        scale = torch.tensor(SCALE, dtype=torch.float64).view(1, 3, 1, 1)
        shift = torch.tensor(SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
        affine = (2.0 / (hi - lo) / scale, (-1.0 - 2.0 * lo / (hi - lo) - shift) / scale)
        super().__init__(backbone, heads, input_range=input_range, reduction=reduction, engine=engine,
                         check_range=check_range, tap_grad_dtype=tap_grad_dtype, chunk_size=chunk_size, affine=affine)
        self.net, self.normalize = net, normalize

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_pair(input, target)
        x, t = self.checked_images("input", input), self.checked_images("target", target)
        return self.reduce(self.per_sample(x, target_x=t))

    def layer_maps(self, input: torch.Tensor, target: torch.Tensor) -> List[torch.Tensor]:
        """Each layer's distance map (B, 1, h, w) at that layer's resolution, through eager autograd.

        The spatial mean of a map is that layer's term of ``forward``'s value (the lpips package's
        ``spatial=True`` and ``retPerLayer=True`` outputs are built from these).
        """
        check_pair(input, target)
        x, t = self.checked_images("input", input), self.checked_images("target", target)
        features = self.backbone(self.to_network(x))
        with torch.set_grad_enabled(torch.is_grad_enabled() and t.requires_grad):
            target_features = self.backbone(self.to_network(t))
        maps = []
        for head in self.heads:
            f0, f1 = features[head.tap], target_features[head.tap]
            maps.append(lpips_map(f0, f1.to(f0.dtype), head.lin))
        return maps
