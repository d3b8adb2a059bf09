"""How perfloss's ops are registered, and which implementation runs where: torch.library, nothing else.

:func:`define` makes each op ``perfloss::<name>`` a ``torch.library.custom_op`` whose body is the
op's plain-PyTorch reference; torch registers it for the CompositeExplicitAutograd key, so it runs
on every device where nothing faster is registered. Faster kernels sit on the per-device keys:

- C++ CPU kernels register themselves with ``TORCH_LIBRARY_IMPL(perfloss, CPU, m)`` (``csrc/``) when
  the extension ``perfloss._C`` is imported, which this module does when it was built;
- Triton kernels (``kernels/``) are registered for CUDA tensors with ``register_kernel("cuda")``.

Each op module registers its fake kernel and autograd formula with ``register_fake`` /
``register_autograd``. Every implementation stays a plain importable function: ``<op>_reference``
in the op's module, the Triton launcher in ``perfloss.kernels.<op>``, and the C++ kernel is what the
op runs on CPU tensors when the extension is loaded.

One switch runs the whole library on one implementation, for every op that has it: the environment
variable ``PERFLOSS_IMPL`` (read once, when perfloss is imported) or the :func:`use` context manager
(tests and benchmarks). Both re-register kernels with torch once; calls pay nothing. ``triton`` on
CPU tensors means Triton's interpreter, so it applies there only under ``TRITON_INTERPRET=1``.
"""
import contextlib
import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from perfloss.kernels.common import interpreting

IMPLEMENTATIONS = ("reference", "cpp", "triton")
DEVICES = ("cpu", "cuda")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@functools.lru_cache(maxsize=None)
def extension_error() -> Optional[str]:
    """None when the C++ extension perfloss._C is loaded (its CPU kernels registered), else why not."""
    try:
        importlib.import_module("perfloss._C")
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_kernel(module: str, name: str) -> Optional[Callable]:
    """``perfloss.kernels.<module>.<name>``, or None where Triton is not installed."""
    if not triton_available():
        return None
    return getattr(importlib.import_module(f"perfloss.kernels.{module}"), name)


@dataclass
class _Entry:
    reference: Callable
    triton: Optional[Callable]
    has_cpp: bool

    def has(self, impl: str, device: str) -> bool:
        if impl == "reference":
            return True
        if impl == "cpp":
            return device == "cpu" and self.has_cpp
        return self.triton is not None and (device == "cuda" or interpreting())

    def default(self, device: str) -> str:
        if self.has("cpp", device):
            return "cpp"
        return "triton" if device == "cuda" and self.triton is not None else "reference"

    def running(self, device: str) -> str:
        return _forced if _forced is not None and self.has(_forced, device) else self.default(device)


_OPS: Dict[str, _Entry] = {}
_forced: Optional[str] = None
_forced_library: Optional[torch.library.Library] = None  # the kernels registered over the defaults


def define(name: str, reference: Callable, *, triton: Optional[Callable] = None, mutates_args: Sequence[str] = ()):
    """Define ``perfloss::<name>`` from its annotated plain-PyTorch ``reference`` (which gives the
    schema and runs where nothing faster is registered); register ``triton`` for CUDA tensors."""
    op = torch.library.custom_op(f"perfloss::{name}", reference, mutates_args=tuple(mutates_args))
    if triton is not None:
        op.register_kernel("cuda", triton)
    # perfloss._C, imported below before any op is defined, has registered the C++ CPU kernels
    _OPS[name] = _Entry(reference, triton, torch._C._dispatch_has_kernel_for_dispatch_key(f"perfloss::{name}", "CPU"))
    if _forced_library is not None:
        _register_forced(name)
    return op


def _register_forced(name: str) -> None:
    entry = _OPS[name]
    for device in DEVICES:
        impl = entry.running(device)
        if impl == entry.default(device):
            continue  # the C++ kernel is only ever a default: never re-registered
        with warnings.catch_warnings():  # torch warns (once) that a kernel is being overridden
            warnings.simplefilter("ignore", UserWarning)
            _forced_library.impl(name, entry.triton if impl == "triton" else entry.reference, _DISPATCH_KEYS[device])


def _select(impl: Optional[str]) -> None:
    global _forced, _forced_library
    if impl is not None and impl not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if _forced_library is not None:
        _forced_library._destroy()  # the default registrations are back
    _forced, _forced_library = impl, None
    if impl is not None:
        _forced_library = torch.library.Library("perfloss", "IMPL")
        for name in _OPS:
            _register_forced(name)


@contextlib.contextmanager
def use(impl: str) -> Iterator[None]:
    """Run every perfloss op that has implementation ``impl`` on it inside the block (Triton on CPU
    tensors only under TRITON_INTERPRET=1); ops without it keep their default. ``backend_info()``
    says what runs. Leaving the block restores what ran before (``PERFLOSS_IMPL``'s choice or none)."""
    previous = _forced
    _select(impl)
    try:
        yield
    finally:
        _select(previous)


def backend_info() -> Dict[str, Dict[str, str]]:
    """Per op, the implementation (``reference``, ``cpp``, ``triton``) that runs on ``cpu`` and ``cuda``."""
    info = {name: {device: entry.running(device) for device in DEVICES} for name, entry in sorted(_OPS.items())}
    info["_extension"] = {"perfloss._C": "loaded" if extension_error() is None else extension_error()}
    return info


extension_error()  # import perfloss._C now, so its CPU kernels are registered before define() looks
_select(os.environ.get("PERFLOSS_IMPL") or None)
