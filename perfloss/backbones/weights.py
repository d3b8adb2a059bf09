"""Filling a backbone's parameters: seeded random init, or a torchvision-format state dict.

``weights`` may be:

* ``None``: deterministic random init from a private generator (the global RNG is untouched), with a
  warning that such features are not perceptually meaningful;
* ``"imagenet"``: torchvision's checkpoint file under ``$TORCH_HOME/hub/checkpoints`` (downloaded
  when the network allows; otherwise a ``FileNotFoundError`` says where to put it);
* a path (``str`` / ``os.PathLike``) to a ``.pth`` state dict, or a state dict itself.

Files are verified before use. A torchvision-named file (``vgg16-397923af.pth``: the hex digits after
the last ``-`` are the start of its sha256, as ``torch.hub``'s ``check_hash`` reads them) is hashed once
per (path, size, mtime) in this process and must match, so a truncated or corrupted download is an
error rather than a network with wrong weights. A file ``torch.load`` cannot read is a ``ValueError``
naming the file and saying when it is truncated. Downloads time out (``DOWNLOAD_TIMEOUT_S`` without
data), go to a temporary file in the same folder and are renamed only once complete and verified.

Keys of torchvision's classifier layers are ignored; every other key must match in name and shape.
Mismatches raise ``ValueError``: nothing is ever loaded with ``strict=False`` silently.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import urllib.request
import uuid
import warnings
import zipfile
from typing import AbstractSet, Any, Callable, Mapping, Optional, Tuple

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
    "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth",
    "densenet121": "densenet121-a639ec97.pth",
    "googlenet": "googlenet-1378be20.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth",
    "efficientnet_b7": "efficientnet_b7_lukemelas-c5b4e57e.pth",
}
URL_ROOT = "https://download.pytorch.org/models/"

RANDOM_SEED = 0
_SHOWN = 5  # how many offending keys an error message lists
DOWNLOAD_TIMEOUT_S = 60.0  # per blocking network operation (connect, each read)
# torchvision's convention: name-<first hex digits of sha256>.pth. At least 8 digits and one letter, so
# that a date or step number after the last dash ("run-20240101.pth") is not taken for a hash.
_HASH_IN_NAME = re.compile(r"-(?=[0-9]*[a-f])([0-9a-f]{8,64})\.pth?$")
_VERIFIED = set()  # (realpath, size, mtime_ns) of files whose hash matched their name


def hash_prefix_of(path: str) -> Optional[str]:
    """The sha256 prefix a torchvision-style file name carries, or None."""
    match = _HASH_IN_NAME.search(os.path.basename(path))
    return match.group(1) if match else None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str) -> None:
    """Check a torchvision-named file against the hash prefix in its name (once per path, size and
    mtime); files without one pass. Raises ``ValueError`` naming the file on a mismatch."""
    prefix = hash_prefix_of(path)
    if prefix is None:
        return
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = _sha256(path)
    if not digest.startswith(prefix):
        raise ValueError(
            f"weights file {path!r} is corrupt or truncated ({st.st_size} bytes): its sha256 starts with "
            f"{digest[:len(prefix)]} but its name says {prefix}; delete it and download it again (a file that "
            f"is not torchvision's must not end in -<hex digits>.pth)")
    _VERIFIED.add(key)


def load_file(path, what: str = "weights file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` after :func:`verify_file`; a file
    that cannot be read is a ``ValueError`` naming it (and saying when it is truncated), not a
    traceback from inside torch.load. A missing file stays a ``FileNotFoundError``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"{what} {path!r} cannot be read: {err.strerror or err}") from err
    verify_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        size = os.path.getsize(path)
        # torch.save writes a zip archive whose directory is at the end; a pickle cut short hits EOF
        truncated = (size == 0 or isinstance(err, EOFError)
                     or any(word in str(err) for word in ("truncated", "unexpected EOF"))
                     or (head == b"PK\x03\x04" and not zipfile.is_zipfile(path)))
        state = "truncated" if truncated else "not a file torch.load can read"
        raise ValueError(f"{what} {path!r} is {state} ({size} bytes): {type(err).__name__}: {err}") from err


def temporary_beside(path: str) -> Tuple[int, str]:
    """(fd, name) of a new, empty file next to ``path`` (same folder, so renaming it over ``path`` is
    atomic), created with the umask's permissions (mkstemp's would be 0600)."""
    directory, name = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def download(url: str, dst: str, hash_prefix: Optional[str] = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` to ``dst``: into a temporary file in dst's folder, checked (complete, hash prefix)
    and fsynced, then renamed; on any failure the temporary file is removed and ``dst`` never exists
    half-written."""
    fd, tmp = temporary_beside(dst)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length") if response.headers else None
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                digest.update(block)
                received += len(block)
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and received != int(expected):
            raise OSError(f"download of {url} truncated: got {received} of {expected} bytes")
        if hash_prefix is not None and not digest.hexdigest().startswith(hash_prefix):
            raise OSError(f"download of {url} is corrupt: sha256 {digest.hexdigest()} does not start with {hash_prefix}")
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    try:
        os.makedirs(directory, exist_ok=True)
        download(url, path, hash_prefix=hash_prefix_of(filename))
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
        state_dict = load_file(path)
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


def state_dict_argument(value: Any, argument: str, default_path: Callable[[], str]) -> Mapping[str, torch.Tensor]:
    """The state dict a loss's weights argument other than ``weights=`` names (``argument``: its name,
    e.g. ``lin_weights``): None for the file ``default_path()`` finds, a path, or a state dict."""
    if value is None:
        value = default_path()
    if isinstance(value, (str, os.PathLike)):
        return load_file(value, f"{argument} file")
    if isinstance(value, dict):
        return value
    raise TypeError(f"{argument} must be None, a path or a state dict, got {type(value).__name__}")


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
