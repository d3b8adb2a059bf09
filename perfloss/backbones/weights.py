"""Filling a backbone's parameters: seeded random init, or a torchvision-format state dict.

``weights`` may be:

* ``None``: deterministic random init from a private generator (the global RNG is untouched), with a
  warning that such features are not perceptually meaningful;
* ``"imagenet"``: torchvision's checkpoint file under ``$TORCH_HOME/hub/checkpoints`` (downloaded by
  ``torch.hub`` when the network allows; otherwise a ``FileNotFoundError`` says where to put it);
* a path (``str`` / ``os.PathLike``) to a ``.pth`` state dict, or a state dict itself.

Keys of torchvision's classifier layers are ignored; every other key must match in name and shape.
Mismatches raise ``ValueError``: nothing is ever loaded with ``strict=False`` silently.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import AbstractSet, Any, Mapping, Tuple

import torch
from torch import nn

# torchvision's ImageNet checkpoints (the file name ends with the first hex digits of its sha256).
IMAGENET_FILES = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
URL_ROOT = "https://download.pytorch.org/models/"

RANDOM_SEED = 0
_SHOWN = 5  # how many offending keys an error message lists


def imagenet_path(name: str) -> str:
    """Path of torchvision's ImageNet checkpoint for ``name``, downloading it if it is absent.

    Raises ``FileNotFoundError`` naming the file, the directory to put it in and its URL when the file
    is absent and cannot be downloaded (the usual case on an offline machine).
    """
    filename = IMAGENET_FILES[name]
    directory = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(directory, filename)
    if os.path.isfile(path):
        return path
    url = URL_ROOT + filename
    hash_prefix = filename[: -len(".pth")].rsplit("-", 1)[1]
    try:
        os.makedirs(directory, exist_ok=True)
        # Looked up on torch.hub at call time so tests can replace it.
        torch.hub.download_url_to_file(url, path, hash_prefix=hash_prefix, progress=False)
    except Exception as err:
        raise FileNotFoundError(
            f"ImageNet weights for {name} not found: place {filename} in {directory} "
            f"(download it from {url} on a machine with network access, or set TORCH_HOME); "
            f"the download failed: {type(err).__name__}: {err}"
        ) from err
    return path


def read_state_dict(weights: Any, name: str) -> Mapping[str, torch.Tensor]:
    """Turn a non-``None`` ``weights`` argument into a state dict."""
    if isinstance(weights, str) and weights == "imagenet":
        weights = imagenet_path(name)
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"weights file {path!r} for {name} does not exist (weights= takes None, 'imagenet', "
                f"a path to a .pth state dict, or a state dict)"
            )
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        where = f"file {path!r}"
    elif isinstance(weights, Mapping):
        state_dict = weights
        where = "the state dict passed"
    else:
        raise TypeError(
            f"weights must be None, 'imagenet', a path to a .pth state dict, or a state dict; "
            f"got {type(weights).__name__}"
        )
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ValueError(f"{where} is not a state dict (a mapping of parameter names to tensors)")
    return state_dict


def load_state_dict_(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    name: str,
    head_prefixes: Tuple[str, ...],
    droppable: AbstractSet[str] = frozenset(),
) -> None:
    """Copy ``state_dict`` into ``module``, checking every key.

    Ignored: keys under ``head_prefixes`` (torchvision's classifier). Optional: BatchNorm's
    ``num_batches_tracked`` (old checkpoints lack it) and the ``droppable`` keys (layers that will be
    truncated away, so a state dict saved from a truncated backbone loads back). Everything else must
    be present with the module's exact shape; anything extra is an error.
    """
    own = module.state_dict()
    given = {k: v for k, v in state_dict.items() if not k.startswith(head_prefixes)}
    optional = {k for k in own if k.endswith(".num_batches_tracked")} | set(droppable)
    missing = sorted(k for k in own if k not in given and k not in optional)
    unexpected = sorted(k for k in given if k not in own)
    wrong = [
        f"{k}: got {tuple(v.shape)}, expected {tuple(own[k].shape)}"
        for k, v in given.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > _SHOWN else ""
            problems.append(f"{label}: {', '.join(items[:_SHOWN])}{more}")
    if problems:
        raise ValueError(
            f"weights do not match {name} (torchvision state-dict layout; {' / '.join(head_prefixes)}* "
            f"keys are ignored): " + "; ".join(problems)
        )
    with torch.no_grad():
        for k, v in given.items():
            own[k].copy_(v)  # state_dict() tensors share storage with the module's


def random_init_(module: nn.Module, seed: int = RANDOM_SEED) -> None:
    """Deterministic init from a private generator; the global RNG is not touched.

    Convs: Kaiming normal (fan_out, ReLU gain) and small random biases. BatchNorm: random affine
    parameters and random running statistics (positive variance) so eval-mode BN is not the identity
    and tests exercise it.
    """
    gen = torch.Generator().manual_seed(seed)
    done = set()
    with torch.no_grad():  # in-place draws: no temporaries, the generator is passed explicitly
        for mod in module.modules():
            if isinstance(mod, nn.Conv2d):
                fan_out = mod.out_channels * math.prod(mod.kernel_size) // mod.groups
                mod.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=gen)
                done.add(id(mod.weight))
                if mod.bias is not None:
                    mod.bias.uniform_(-0.05, 0.05, generator=gen)
                    done.add(id(mod.bias))
            elif isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.uniform_(-0.1, 0.1, generator=gen)
                mod.running_mean.uniform_(-0.1, 0.1, generator=gen)
                mod.running_var.uniform_(0.5, 1.5, generator=gen)
                mod.num_batches_tracked.zero_()
                done.update(id(p) for p in (mod.weight, mod.bias))
    left = [n for n, p in module.named_parameters() if id(p) not in done]
    if left:  # a new layer type needs a rule here
        raise NotImplementedError(f"random_init_ has no rule for parameters {left[:_SHOWN]}")


def apply_weights_(
    module: nn.Module,
    name: str,
    weights: Any,
    head_prefixes: Tuple[str, ...],
    droppable: AbstractSet[str] = frozenset(),
    stacklevel: int = 2,
) -> None:
    """Fill ``module`` (the full, untruncated network) according to ``weights``."""
    if weights is None:
        warnings.warn(
            f"perfloss: {name} has random weights (weights=None); its features are NOT perceptually "
            f"meaningful. Pass weights='imagenet', a path to torchvision's .pth file, or a state dict.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
        random_init_(module)
        return
    load_state_dict_(module, read_state_dict(weights, name), name, head_prefixes, droppable)
