"""Frozen ImageNet backbones with named taps, defined here (torchvision is never imported).

    >>> from perfloss.backbones import get_backbone
    >>> net = get_backbone("vgg16", ["relu2_2", "relu3_3"], weights="imagenet")
    >>> feats = net(x)   # x: ImageNet-normalised (B, 3, H, W); feats: {"relu2_2": ..., "relu3_3": ...}

State-dict keys equal torchvision's (without the classifier head), so torchvision's ``.pth`` files load
directly. See :mod:`perfloss.backbones.weights` for the ``weights`` argument.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Union

import torch

from . import alexnet, resnet, squeezenet, vgg
from .base import Backbone, tap_names
from .weights import apply_weights_

__all__ = ["Backbone", "get_backbone", "list_backbones", "list_taps"]

# name -> architecture module (each provides NAMES, HEAD_PREFIXES and build(name, pooling)).
_ARCHS = {name: arch for arch in (vgg, alexnet, squeezenet, resnet) for name in arch.NAMES}
_POOLINGS = ("max", "avg", "l2")


def list_backbones() -> List[str]:
    """Names accepted by :func:`get_backbone`, sorted."""
    return sorted(_ARCHS)


def _arch(name: str):
    try:
        return _ARCHS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}") from None


def list_taps(name: str) -> List[str]:
    """Every tap of backbone ``name``, in network order."""
    with torch.device("meta"):  # structure only: no memory, no RNG
        _, stages = _arch(name).build(name)
    return tap_names(stages)


def get_backbone(
    name: str,
    taps: Union[None, str, Iterable[str]] = None,
    weights: Any = None,
    *,
    pooling: str = "max",
) -> Backbone:
    """Build a frozen, eval-mode :class:`Backbone` truncated after its deepest requested tap.

    Args:
        name: one of :func:`list_backbones`.
        taps: tap names (see :func:`list_taps`); ``None`` = all of them. Duplicates are dropped and the
            order is the network's.
        weights: ``None`` (seeded random init, with a warning), ``"imagenet"`` (torchvision's file in
            ``torch.hub.get_dir()/checkpoints``), a path to a ``.pth`` state dict, or a state dict.
        pooling: ``"max"``; or, VGG only, ``"avg"`` to replace every max-pool by an average pool, ``"l2"``
            by DISTS's L2 pooling.
    """
    arch = _arch(name)
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    if pooling != "max" and arch is not vgg:
        raise ValueError(f"pooling={pooling!r} is only available for VGG networks, not {name}")
    # Build on the meta device: the layer constructors' default init would otherwise draw from the
    # global RNG (and waste time); Backbone materialises the tensors and the loader fills them.
    with torch.device("meta"):
        children, stages = arch.build(name, pooling)

    def load(module, droppable):
        # stacklevel: warn -> apply_weights_ -> load -> Backbone.__init__ -> get_backbone -> caller
        apply_weights_(module, name, weights, arch.HEAD_PREFIXES, droppable, stacklevel=4)

    return Backbone(name, children, stages, taps, load_weights=load, pooling=pooling)
