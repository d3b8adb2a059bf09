"""How perfloss's ops are registered, and which implementation runs where: torch.library, nothing else.

:func:`define` makes each op ``perfloss::<name>`` a ``torch.library.custom_op`` whose body is the
op's plain-PyTorch reference; torch registers it for the CompositeExplicitAutograd key, so it runs
on every device where nothing faster is registered. Faster kernels sit on the per-device keys:

- C++ kernels register themselves with ``TORCH_LIBRARY_IMPL(perfloss, CPU, m)`` (``csrc/``) and, in a
  CUDA build, ``TORCH_LIBRARY_IMPL(perfloss, CUDA, m)`` (``csrc/cuda/``) when the extension
  ``perfloss._C`` is imported, which this module does when it was built (after checking that it was
  built for the installed torch);
- Triton kernels (``kernels/``) and, where an implementation is chosen over a C++ kernel, the
  reference are registered over them from here, in one ``torch.library.Library`` (destroying it
  brings back what ``perfloss._C`` registered).

Which implementation runs by default: on CPU the C++ kernel, else the reference. On CUDA, the first
of ``CUDA_ORDER`` the op has. ``gram`` and ``style_loss`` put their C++ kernel first: on an H200
(benchmarks/results/gpu/loss_ops_gpu_cuda.log) its cuBLAS GEMMs beat the Triton split-K Gram 1.9-10x in
bf16 and in most fp32 shapes, and Triton's autotuning of every new shape stalled the first steps of a
style loss for tens of seconds. The other ops keep Triton first until a GPU measures them: CI runs every
Triton kernel whole under the interpreter, while a C++ CUDA kernel is CI-tested only through the
arithmetic it shares with the CPU kernels (``csrc/*_math.h``) and by compiling.

Each op module registers its fake kernel and autograd formula with ``register_fake`` /
``register_autograd``. Every implementation stays a plain importable function: ``<op>_reference``
in the op's module, the Triton launcher in ``perfloss.kernels.<op>``, and the C++ kernel is what the
op runs on the device's tensors when the extension is loaded (and ``use("cpp")`` is in force on CUDA).

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
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from perfloss.kernels.common import interpreting

IMPLEMENTATIONS = ("reference", "cpp", "triton")
DEVICES = ("cpu", "cuda")
# The order a CUDA tensor's implementation is chosen in, per op (see the module docstring for why).
CUDA_ORDER = {"gram": ("cpp", "triton"), "style_loss": ("cpp", "triton")}
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def check_build() -> None:
    """Raise ImportError, naming both, when perfloss._C was compiled for another torch (major.minor)
    or CUDA than the installed one: loading it would fail with an undefined symbol, or worse."""
    try:
        build = importlib.import_module("perfloss._build_info")
    except ImportError:  # a source tree that was never built: nothing to check
        return
    if build.TORCH_VERSION is None:
        return
    built = f"torch {build.TORCH_VERSION} ({'CUDA ' + build.CUDA_VERSION if build.CUDA_VERSION else 'CPU'})"
    installed = f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'})"
    same_torch = build.TORCH_VERSION.split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]
    # a CPU build runs on a CUDA torch (it links only torch's CPU libraries), not the other way round
    same_cuda = build.CUDA_VERSION is None or (torch.version.cuda or "").split(".")[0] == build.CUDA_VERSION.split(".")[0]
    if not (same_torch and same_cuda):
        raise ImportError(f"perfloss's extension was built for {built}, but {installed} is installed. Install the "
                          f"perfloss wheel built for your torch and CUDA, or build from source against it: "
                          f"pip install --no-build-isolation perfloss (README: Installing)")


@functools.lru_cache(maxsize=None)
def extension_error() -> Optional[str]:
    """None when the C++ extension perfloss._C is loaded (its kernels registered), else why not."""
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


def _has_cpp(name: str, device: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"perfloss::{name}", _DISPATCH_KEYS[device])


@dataclass
class _Entry:
    name: str
    reference: Callable
    triton: Optional[Callable]
    cpp: Tuple[str, ...]  # the devices perfloss._C registered a C++ kernel for

    def has(self, impl: str, device: str) -> bool:
        if impl == "reference":
            return True
        if impl == "cpp":
            return device in self.cpp
        return self.triton is not None and (device == "cuda" or interpreting())

    def default(self, device: str) -> str:
        order = ("cpp",) if device == "cpu" else CUDA_ORDER.get(self.name, ("triton", "cpp"))
        return next((impl for impl in order if self.has(impl, device)), "reference")

    def running(self, device: str) -> str:
        return _forced if _forced is not None and self.has(_forced, device) else self.default(device)

    def registered(self, device: str) -> str:
        """What runs on the device's tensors with nothing registered from here."""
        return "cpp" if device in self.cpp else "reference"


_OPS: Dict[str, _Entry] = {}
_forced: Optional[str] = None
_library: Optional[torch.library.Library] = None  # the kernels registered over perfloss._C's and the references


def define(name: str, reference: Callable, *, triton: Optional[Callable] = None, mutates_args: Sequence[str] = ()):
    """Define ``perfloss::<name>`` from its annotated plain-PyTorch ``reference`` (which gives the
    schema and runs where nothing faster is registered); ``triton`` is its kernel for CUDA tensors."""
    op = torch.library.custom_op(f"perfloss::{name}", reference, mutates_args=tuple(mutates_args))
    # perfloss._C, imported below before any op is defined, has registered its C++ kernels
    _OPS[name] = _Entry(name, reference, triton, tuple(d for d in DEVICES if _has_cpp(name, d)))
    _register(name)
    return op


def _register(name: str) -> None:
    entry = _OPS[name]
    for device in DEVICES:
        impl = entry.running(device)
        if impl == entry.registered(device):
            continue
        with warnings.catch_warnings():  # torch warns (once) that a C++ kernel is being overridden
            warnings.simplefilter("ignore", UserWarning)
            _library.impl(name, entry.triton if impl == "triton" else entry.reference, _DISPATCH_KEYS[device])


def _select(impl: Optional[str]) -> None:
    global _forced, _library
    if impl is not None and impl not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if _library is not None:
        _library._destroy()  # perfloss._C's registrations are back
    _forced, _library = impl, torch.library.Library("perfloss", "IMPL")
    for name in _OPS:
        _register(name)


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


def selected() -> Optional[str]:
    """The implementation every op that has it runs on (``PERFLOSS_IMPL`` or :func:`use`), None for the defaults."""
    return _forced


def backend_info() -> Dict[str, Dict[str, str]]:
    """Per op, the implementation (``reference``, ``cpp``, ``triton``) that runs on ``cpu`` and ``cuda``."""
    info = {name: {device: entry.running(device) for device in DEVICES} for name, entry in sorted(_OPS.items())}
    info["_extension"] = {"perfloss._C": "loaded" if extension_error() is None else extension_error()}
    if extension_error() is None:
        build = importlib.import_module("perfloss._build_info")
        info["_extension"].update(torch=build.TORCH_VERSION, cuda=str(build.CUDA_VERSION), cuda_archs=str(build.CUDA_ARCHS))
    return info


check_build()
extension_error()  # import perfloss._C now, so its kernels are registered before define() looks
_select(os.environ.get("PERFLOSS_IMPL") or None)
