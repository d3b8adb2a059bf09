"""Which implementation of a perfloss op runs on which device.

Every op module registers its implementations here, per device type. The most preferred available
one runs (see PREFERENCE), unless the environment variable PERFLOSS_IMPL names another
implementation that the op has and that can run there (tests and benchmarks use this to compare
implementations of one op). An op that should not use a native kernel simply does not register it.
Implementations:

- ``reference``: plain PyTorch, every op has it, runs anywhere;
- ``cpp``: the C++ extension ``perfloss._C`` (CPU kernels in csrc/);
- ``cuda``: the same extension's CUDA kernels (csrc/cuda/), when it was built with CUDA;
- ``triton``: Triton kernels (kernels/); on CPU tensors only with TRITON_INTERPRET=1 and only
  when forced, since the interpreter exists for testing, not speed.
"""
import functools
import importlib
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

IMPLEMENTATIONS = ("reference", "cpp", "cuda", "triton")

# Per device type, implementations in order of preference: a native kernel over the plain-PyTorch
# reference; Triton on CPU is the interpreter, for tests only (and runs only when forced).
PREFERENCE = {"cpu": ("cpp", "reference", "triton"), "cuda": ("cuda", "triton", "reference")}

# op name -> device type -> [(implementation, function)], most preferred first
_REGISTRY: Dict[str, Dict[str, List[Tuple[str, Callable]]]] = {}


@functools.lru_cache(maxsize=None)
def extension_error() -> Optional[str]:
    """None when perfloss._C is loaded, else why it is not."""
    try:
        importlib.import_module("perfloss._C")
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def native_op(name: str):
    """The C++ op ``torch.ops.perfloss.<name>``, or None when the extension lacks it."""
    if extension_error() is not None:
        return None
    return getattr(torch.ops.perfloss, name, None)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def register(op: str, impl: str, devices: Tuple[str, ...]):
    """Decorator: register ``fn`` as implementation ``impl`` of ``op`` on ``devices``."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")

    def decorator(fn: Callable) -> Callable:
        per_device = _REGISTRY.setdefault(op, {})
        for device in devices:
            entries = per_device.setdefault(device, [])
            entries.append((impl, fn))
            entries.sort(key=lambda entry: PREFERENCE[device].index(entry[0]))
        return fn

    return decorator


def _runs_by_default(impl: str, device: str) -> bool:
    # Triton on CPU means the interpreter: correct but slow, so only ever on request.
    return not (impl == "triton" and device != "cuda")


def _can_run(impl: str, device: str) -> bool:
    if impl == "triton":
        return triton_available() and (device == "cuda" or triton_interpreting())
    return True


def forced_impl() -> Optional[str]:
    forced = os.environ.get("PERFLOSS_IMPL")
    if forced and forced not in IMPLEMENTATIONS:
        raise ValueError(f"PERFLOSS_IMPL must be one of {IMPLEMENTATIONS}, got {forced!r}")
    return forced or None


def choose(op: str, device: str) -> Tuple[str, Callable]:
    """The (implementation name, function) that runs ``op`` on device type ``device``."""
    candidates = _REGISTRY.get(op, {}).get(device, [])
    forced = forced_impl()
    if forced is not None:
        for impl, fn in candidates:
            if impl == forced and _can_run(impl, device):
                return impl, fn
    for impl, fn in candidates:
        if _runs_by_default(impl, device) and _can_run(impl, device):
            return impl, fn
    raise NotImplementedError(f"perfloss op {op!r} has no implementation for device {device!r}")


def call(op: str, *args, **kwargs):
    """Run ``op`` with the implementation chosen for the device of its first tensor argument."""
    device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    return choose(op, device)[1](*args, **kwargs)


def backend_info() -> Dict[str, Dict[str, str]]:
    """Per op, which implementation runs on ``cpu`` and on ``cuda`` right now."""
    info = {}
    for op in sorted(_REGISTRY):
        info[op] = {device: choose(op, device)[0] for device in ("cpu", "cuda")}
    info["_extension"] = {"perfloss._C": "loaded" if extension_error() is None else extension_error()}
    return info
