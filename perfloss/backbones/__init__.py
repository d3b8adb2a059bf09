"""Frozen ImageNet backbones with named taps, defined here (torchvision is never imported).

    >>> from perfloss.backbones import get_backbone
    >>> net = get_backbone("vgg16", ["relu2_2", "relu3_3"], weights="imagenet")
    >>> feats = net(x)   # x: ImageNet-normalised (B, 3, H, W); feats: {"relu2_2": ..., "relu3_3": ...}

State-dict keys equal torchvision's (without the classifier head), so torchvision's ``.pth`` files load
directly. See :mod:`perfloss.backbones.weights` for the ``weights`` argument. :func:`study_taps` names
the four taps per network that Pihlgren et al. (2023) compared as loss layers.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple, Union

import torch

from . import alexnet, densenet, efficientnet, googlenet, inception, resnet, squeezenet, vgg
from .base import Backbone, tap_names
from .weights import apply_weights_, read_state_dict

__all__ = ["Backbone", "STUDY_TAPS", "get_backbone", "list_backbones", "list_taps", "study_taps"]

# name -> architecture module (each provides NAMES, HEAD_PREFIXES and build(name, pooling); densenet also
# rename_legacy_keys for torchvision's old-format files).
_ARCHS = {name: arch for arch in (vgg, alexnet, squeezenet, resnet, densenet, googlenet, inception, efficientnet)
          for name in arch.NAMES}
_POOLINGS = ("max", "avg", "l2")

_RESNET_STUDY = ("relu", "layer1", "layer2", "layer4")
_VGG16_STUDY = ("relu1_2", "relu2_2", "relu3_3", "relu5_3")
_EFFICIENTNET_STUDY = ("stem", "stage1", "stage4", "stage7")
# The four extraction points per network of Pihlgren et al. (2023), "A systematic performance analysis
# of deep perceptual loss networks", in network order.
STUDY_TAPS: Dict[str, Tuple[str, ...]] = {
    "alexnet": ("relu1", "relu2", "relu3", "relu5"),
    "vgg11": ("relu1_1", "relu2_1", "relu3_2", "relu5_2"),
    "vgg16": _VGG16_STUDY,
    "vgg16_bn": _VGG16_STUDY,
    "vgg19": ("relu1_2", "relu2_2", "relu3_4", "relu5_4"),
    "resnet18": _RESNET_STUDY,
    "resnet50": _RESNET_STUDY,
    "resnext50_32x4d": _RESNET_STUDY,
    "densenet121": ("relu0", "denseblock1", "denseblock2", "denseblock4"),
    "googlenet": ("conv1", "inception3a", "inception4a", "inception5b"),
    "inception_v3": ("Conv2d_2b_3x3", "Mixed_5b", "Mixed_5d", "Mixed_6e"),
    "squeezenet1_1": ("relu1", "fire2", "fire5", "fire9"),
    "efficientnet_b0": _EFFICIENTNET_STUDY,
    "efficientnet_b7": _EFFICIENTNET_STUDY,
}


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


def study_taps(name: str) -> List[str]:
    """The four taps of ``name`` that Pihlgren et al. (2023) compared as loss layers, in network order
    (a subset of :func:`list_taps`). ``ValueError`` for a network outside that study."""
    _arch(name)
    if name not in STUDY_TAPS:
        raise ValueError(f"{name} is not one of the study's networks; those are: {', '.join(sorted(STUDY_TAPS))}")
    return list(STUDY_TAPS[name])


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
        given = weights
        if given is not None and hasattr(arch, "rename_legacy_keys"):
            given = arch.rename_legacy_keys(read_state_dict(given, name))
        # stacklevel: warn -> apply_weights_ -> load -> Backbone.__init__ -> get_backbone -> caller
        apply_weights_(module, name, given, arch.HEAD_PREFIXES, droppable, stacklevel=4)

    return Backbone(name, children, stages, taps, load_weights=load, pooling=pooling)
