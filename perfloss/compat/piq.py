"""piq 0.8's ``ContentLoss``, ``StyleLoss``, ``LPIPS`` and ``DISTS`` backed by perfloss.

Same constructors, inputs in [0, 1] (then ``(x - mean) / std``), ``reduction`` over the batch
(``"none"``: (B,)). piq's per-layer terms, written in perfloss's:

- ContentLoss: sum over channels of the spatial mean distance = C x perfloss's mean over (C, H, W);
  ``normalize_features=True`` with ``'mse'``: perfloss's LPIPS-kind distance (unit-normalised channels),
  a per-channel weight tensor (1, C, 1, 1) then being LPIPS's linear weights;
- StyleLoss: Grams F F^T without normalisation, mean over (C, C) of the squared difference
  = (H W)^2 x perfloss's squared Frobenius distance of Grams F F^T / (C H W);
- LPIPS: VGG-16, unit-normalised features weighted per channel, ImageNet statistics (not lpips'
  scaling layer), the linear weights read from the installed lpips wheel (piq downloads its own copy);
- DISTS: :class:`perfloss.DISTS` with alpha, beta as they are in the file (piq does not divide them
  by their total) and piq's resize of inputs larger than 256 pixels on the short side; with
  ``reduction='sum'`` piq gives 1 - sum of the similarities (not the sum of the per-image scores), and
  so does this class.

Differences: ``feature_extractor`` must be ``'vgg16'`` or ``'vgg19'`` (not a module);
``'mae'`` with ``normalize_features`` or with StyleLoss, and a layer/weight count mismatch, raise;
the unit normalisation puts its epsilon inside the square root (finite gradients at zero features).
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from perfloss.backbones import get_backbone
from perfloss.compat.heads_loss import HeadsLoss
from perfloss.heads import TapHead
from perfloss.inputs import IMAGENET_MEAN, IMAGENET_STD, REDUCTIONS, pixel_affine, reduce
from perfloss.losses.dists import DISTS as PerflossDISTS
from perfloss.losses.lpips import NETS, load_lin_weights

DISTANCES = {"mse": "mse", "mae": "l1"}
DISTS_MAX_SIDE = 256  # piq resizes inputs whose shorter side is larger


def _check_extractor(feature_extractor):
    if feature_extractor not in ("vgg16", "vgg19"):
        raise ValueError("feature_extractor must be 'vgg16' or 'vgg19' in perfloss.compat.piq (perfloss builds its "
                         f"own frozen backbones), got {feature_extractor!r}")


def _layer_weights(layers: Sequence[str], weights, allow_mismatch: bool) -> List[torch.Tensor]:
    if len(weights) != len(layers):
        flag = " (allow_layers_weights_mismatch=True is not supported)" if allow_mismatch else ""
        raise ValueError(f"weights must have one entry per layer ({len(layers)}), got {len(weights)}{flag}")
    # as piq: numbers become (float32) tensors, so a weight like 1e-3 is its float32 value on both sides
    return [(w if isinstance(w, torch.Tensor) else torch.tensor(w)).detach() for w in weights]


class ContentLoss(HeadsLoss):
    """piq's ContentLoss. perfloss keywords: ``vgg_weights`` (the backbone's, default ``"imagenet"``;
    piq's own ``weights`` are the layer weights), ``engine``, ``chunk_size``."""

    gram = False

    def __init__(self, feature_extractor="vgg16", layers=("relu3_3",), weights=(1.,), replace_pooling=False,
                 distance="mse", reduction="mean", mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize_features=False,
                 allow_layers_weights_mismatch=False, *, vgg_weights="imagenet", engine=None, chunk_size=None):
        _check_extractor(feature_extractor)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be 'mse' or 'mae', got {distance!r}")
        layers = list(layers)
        layer_weights = _layer_weights(layers, list(weights), allow_layers_weights_mismatch)
        backbone = get_backbone(feature_extractor, taps=layers, weights=vgg_weights,
                                pooling="avg" if replace_pooling else "max")
        heads = self.make_heads(layers, layer_weights, DISTANCES[distance], normalize_features, backbone)
        super().__init__(backbone, heads, affine=pixel_affine((0.0, 1.0), mean, std), reduction=reduction, engine=engine,
                         chunk_size=chunk_size, detach_target=False)

    @staticmethod
    def make_heads(layers, layer_weights, kind, normalize_features, backbone) -> List[TapHead]:
        heads = []
        for tap, w in zip(layers, layer_weights):
            channels = backbone.tap_channels[tap]
            if normalize_features:
                if kind != "mse":
                    raise ValueError("normalize_features=True with distance='mae' is not supported by "
                                     "perfloss.compat.piq; use distance='mse'")
                lin = w.reshape(-1).expand(channels) if w.numel() == 1 else w.reshape(-1)
                if lin.numel() != channels:
                    raise ValueError(f"the weight for layer {tap!r} must be a number or have {channels} values "
                                     f"(one per channel), got {w.numel()}")
                heads.append(TapHead(tap, "lpips", 1.0, lin.float()))
            else:
                if w.numel() != 1:
                    raise ValueError(f"the weight for layer {tap!r} must be a number without "
                                     f"normalize_features=True, got {w.numel()} values")
                heads.append(TapHead(tap, kind, float(w) * channels))
        return heads


class StyleLoss(ContentLoss):
    """piq's StyleLoss (same arguments as ContentLoss; ``distance='mse'`` only)."""

    @staticmethod
    def make_heads(layers, layer_weights, kind, normalize_features, backbone) -> List[TapHead]:
        if kind != "mse":
            raise ValueError("distance='mae' (L1 between Gram matrices) is not supported by "
                             "perfloss.compat.piq.StyleLoss; use distance='mse'")
        if normalize_features:
            raise ValueError("normalize_features=True is not supported by perfloss.compat.piq.StyleLoss")
        for tap, w in zip(layers, layer_weights):
            if w.numel() != 1:
                raise ValueError(f"the weight for layer {tap!r} must be a number, got {w.numel()} values")
        # the (H W)^2 factor depends on the input size: forward sets each head's weight
        heads = [TapHead(tap, "gram", 1.0) for tap in layers]
        for head, w in zip(heads, layer_weights):
            head.piq_weight = float(w)
        return heads

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shapes = self.backbone.output_shapes(x.shape[-2], x.shape[-1])
        for head in self.heads:
            _, h, w = shapes[head.tap]
            head.weight = head.piq_weight * float(h * w) ** 2
        return super().forward(x, y)


class LPIPS(HeadsLoss):
    """piq's LPIPS (VGG-16). perfloss keywords: ``vgg_weights``, ``lin_weights`` (default: the lpips
    wheel's ``vgg.pth``), ``engine``, ``chunk_size``."""

    def __init__(self, replace_pooling=False, distance="mse", reduction="mean", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, *, vgg_weights="imagenet", lin_weights=None, engine=None, chunk_size=None):
        if distance != "mse":
            raise ValueError(f"distance={distance!r} is not supported by perfloss.compat.piq.LPIPS (unit-normalised "
                             "features with 'mae'); use distance='mse'")
        name, taps = NETS["vgg"]
        backbone = get_backbone(name, taps=taps, weights=vgg_weights, pooling="avg" if replace_pooling else "max")
        lins = load_lin_weights(lin_weights, "vgg", "0.1", [backbone.tap_channels[t] for t in taps])
        heads = [TapHead(tap, "lpips", 1.0, lin) for tap, lin in zip(taps, lins)]
        super().__init__(backbone, heads, affine=pixel_affine((0.0, 1.0), mean, std), reduction=reduction, engine=engine,
                         chunk_size=chunk_size, detach_target=False)


class DISTS(nn.Module):
    """piq's DISTS: ``1 - sum alpha S1 + beta S2`` (a loss: 0 for identical images). perfloss keywords:
    ``vgg_weights``, ``dists_weights`` (default: the dists-pytorch wheel's ``weights.pt``), ``engine``,
    ``chunk_size``."""

    def __init__(self, reduction="mean", mean=IMAGENET_MEAN, std=IMAGENET_STD, *, vgg_weights="imagenet",
                 dists_weights=None, engine=None, chunk_size=None):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.dists = PerflossDISTS(weights=vgg_weights, dists_weights=dists_weights, reduction="none",
                                   engine=engine, chunk_size=chunk_size, normalize_dists_weights=False,
                                   affine=pixel_affine((0.0, 1.0), mean, std))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        side = min(x.shape[-2], x.shape[-1])
        if side > DISTS_MAX_SIDE:  # as piq: bilinear, to 256 pixels on the shorter side
            factor = DISTS_MAX_SIDE / side
            x = F.interpolate(x, scale_factor=factor, recompute_scale_factor=False, mode="bilinear")
            y = F.interpolate(y, scale_factor=factor, recompute_scale_factor=False, mode="bilinear")
        values = self.dists(x, y)
        if self.reduction == "sum":  # piq reduces the similarities, then subtracts from 1: 1 - sum(1 - values)
            return 1 - (1 - values).sum()
        return reduce(values, self.reduction)
