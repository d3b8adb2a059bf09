"""``lpips.LPIPS`` (lpips 0.1.4) backed by :class:`perfloss.LPIPS`.

Same constructor, ``forward(in0, in1, retPerLayer=False, normalize=False)``, inputs in [-1, 1]
(``normalize=True``: [0, 1]), values (B, 1, 1, 1), ``spatial=True`` maps (B, 1, H, W) (each layer's map
upsampled bilinearly, ``align_corners=False``, and summed), ``lpips=False`` (the unweighted
baseline), ``retPerLayer=True`` (value, [per-layer values]).

Differences: the plain value runs on the lean engine (``spatial`` and ``retPerLayer`` on eager
autograd, as they return maps); the unit normalisation puts its epsilon inside the square root, so
gradients stay finite where a feature vector is zero (the package gives NaN there); the module never
enters training mode (the package's dropout before the linear layers would then act); the backbone
is frozen.
"""
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from perfloss.losses.lpips import NETS
from perfloss.losses.lpips import LPIPS as PerflossLPIPS

# channels at the taps of perfloss.losses.lpips.NETS (the lpips package's ``chns``)
TAP_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512),
                "squeeze": (64, 128, 256, 384, 384, 512, 512)}


class LPIPS(nn.Module):
    """lpips 0.1.4's ``LPIPS``; perfloss keywords: ``weights`` (the backbone's, default ``"imagenet"``),
    ``lin_weights`` (default: the installed lpips wheel's file, as the package), ``engine``,
    ``chunk_size``."""

    def __init__(self, pretrained=True, net="alex", version="0.1", lpips=True, spatial=False, pnet_rand=False,
                 pnet_tune=False, use_dropout=True, model_path=None, eval_mode=True, verbose=True, *,
                 weights="imagenet", lin_weights=None, engine=None, chunk_size=None):
        super().__init__()
        if pnet_tune:
            raise ValueError("pnet_tune=True (training the backbone) is not supported by perfloss.compat.lpips: "
                             "perfloss's backbone is frozen")
        if lpips and not pretrained:
            raise ValueError("pretrained=False (randomly initialised linear layers) is not supported by "
                             "perfloss.compat.lpips: pass lin_weights=<a state dict or path> instead")
        if lpips and use_dropout and not eval_mode:
            raise ValueError("eval_mode=False with use_dropout=True (dropout before the linear layers) is not "
                             "supported by perfloss.compat.lpips: perfloss's LPIPS is always in eval mode")
        if model_path is not None and lin_weights is not None:
            raise ValueError("give the linear weights once: model_path or lin_weights, not both")
        if net not in NETS:
            raise ValueError(f"net must be one of {tuple(NETS)}, got {net!r}")
        if pnet_rand:
            if not (isinstance(weights, str) and weights == "imagenet"):
                raise ValueError("pnet_rand=True asks for a random backbone: leave weights at its default")
            weights = None
        if not lpips:  # the baseline: channel distances summed without learned weights
            lin_weights = {f"lin{i}.model.1.weight": torch.ones(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS[net])}
        elif model_path is not None:
            lin_weights = model_path
        self.loss = PerflossLPIPS(net=net, version=version, weights=weights, lin_weights=lin_weights,
                                  reduction="none", engine=engine, chunk_size=chunk_size)
        self.net_name, self.version, self.lpips, self.spatial = net, version, lpips, spatial
        if verbose:
            print(f"Setting up [{'LPIPS' if lpips else 'baseline'}] perceptual loss: trunk [{net}], v[{version}], "
                  f"spatial [{'on' if spatial else 'off'}] (perfloss.compat.lpips)")

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: bool = False,
                normalize: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        if normalize:  # [0, 1] -> [-1, 1], as the package does
            in0, in1 = 2 * in0 - 1, 2 * in1 - 1
        if not (self.spatial or retPerLayer):
            return self.loss(in0, in1).view(-1, 1, 1, 1)
        maps = self.loss.layer_maps(in0, in1)
        if self.spatial:
            res = [F.interpolate(m, size=tuple(in0.shape[2:]), mode="bilinear", align_corners=False) for m in maps]
        else:
            res = [m.mean([2, 3], keepdim=True) for m in maps]
        value = res[0]
        for r in res[1:]:
            value = value + r
        return (value, res) if retPerLayer else value

