"""Build perfloss and its extension perfloss._C: the C++ CPU kernels (csrc/*.cpp) and, against a CUDA
build of torch, the CUDA kernels (csrc/cuda/*.cu with their torch glue csrc/cuda/*.cpp).

The extension is abi3 (``py_limited_api``: it uses no pybind11 and only the limited C API), so one
wheel serves every Python >= 3.10; it is tied to the torch (and CUDA) it was compiled against, which
the build records in ``perfloss/_build_info.py`` and ``import perfloss`` checks.

Environment:
  PERFLOSS_CUDA         ``auto`` (default: CUDA kernels when torch is a CUDA build and nvcc is found),
                        ``1`` (required: fail without them) or ``0`` (CPU kernels only)
  PERFLOSS_CUDA_ARCHS   the GPU architectures, torch's TORCH_CUDA_ARCH_LIST syntax; default
                        ``8.0;9.0;10.0;12.0+PTX`` (SASS for each, PTX for the newest). TORCH_CUDA_ARCH_LIST
                        is used when PERFLOSS_CUDA_ARCHS is not set.
  PERFLOSS_LOCAL_VERSION  ``1``: append the torch / CUDA pair as a local version (``0.1.0+cu130torch2.11``,
                        ``0.1.0+cputorch2.13``), for wheels kept side by side; unset: the plain version
                        (what a package index takes).
If torch is not importable at build time the package installs without the extension and runs its
plain-PyTorch references (``perfloss.backend_info()`` says so).
"""
import glob
import os
import re
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # build_checks.py, next to this file
from build_checks import check_shared_libstdcxx  # noqa: E402

DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0;12.0+PTX"


def _base_version() -> str:
    with open(os.path.join("perfloss", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _want_cuda(torch, cpp_extension) -> bool:
    mode = os.environ.get("PERFLOSS_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"PERFLOSS_CUDA must be auto, 0 or 1, got {mode!r}")
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if mode == "1" and not available:
        raise RuntimeError(f"PERFLOSS_CUDA=1 needs a CUDA build of torch (found torch {torch.__version__}, "
                           f"CUDA {torch.version.cuda}) and nvcc (CUDA_HOME={cpp_extension.CUDA_HOME})")
    return mode != "0" and available


def _write_build_info(torch_version, cuda_version, cuda_archs) -> None:
    # Read by perfloss/ops/library.py before it loads perfloss._C (ignored by git: it is generated).
    with open(os.path.join("perfloss", "_build_info.py"), "w") as f:
        f.write('"""What perfloss._C was compiled against (written by setup.py)."""\n'
                f"TORCH_VERSION = {torch_version!r}\nCUDA_VERSION = {cuda_version!r}\nCUDA_ARCHS = {cuda_archs!r}\n")


def _extensions():
    """(ext_modules, cmdclass, local version) for the torch found at build time."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _write_build_info(None, None, None)
        return [], {}, None
    sources = sorted(glob.glob("csrc/*.cpp"))
    cxx_flags = ["-O3"]  # torch picks the C++ standard its headers need
    if os.name != "nt":
        cxx_flags += ["-fopenmp"]  # at::parallel_for's OpenMP pragmas live in torch's headers
    torch_version = torch.__version__.split("+")[0]
    # py_limited_api: torch compiles with -DPy_LIMITED_API=0x030A0000 (Python 3.10), hence the cp310 tag below
    kwargs = dict(include_dirs=[os.path.abspath("csrc")], extra_link_args=["-fopenmp"], py_limited_api=True)
    if _want_cuda(torch, cpp_extension):
        archs = os.environ.get("PERFLOSS_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # what cpp_extension turns into -gencode flags
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        # -lineinfo: compute-sanitizer and ncu report source lines; it does not change the code.
        nvcc_flags = ["-O3", "-lineinfo"]
        ext = cpp_extension.CUDAExtension("perfloss._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                                          **kwargs)
        cuda = torch.version.cuda
        _write_build_info(torch_version, cuda, archs)
        local = f"cu{cuda.replace('.', '')}torch{_major_minor(torch_version)}"
    else:
        ext = cpp_extension.CppExtension("perfloss._C", sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)
        _write_build_info(torch_version, None, None)
        local = f"cputorch{_major_minor(torch_version)}"
    return [ext], {"build_ext": _checked_build_ext(cpp_extension.BuildExtension)}, local


def _checked_build_ext(base):
    """torch's BuildExtension, then build_checks on each extension it linked."""
    class CheckedBuildExtension(base):
        def build_extension(self, ext):
            super().build_extension(ext)
            linker = getattr(self.compiler, "linker_so", None) or ["the C++ linker"]
            check_shared_libstdcxx(self.get_ext_fullpath(ext.name), linker[0])

    return CheckedBuildExtension


ext_modules, cmdclass, local_version = _extensions()
version = _base_version()
if os.environ.get("PERFLOSS_LOCAL_VERSION") == "1" and local_version:
    version += "+" + local_version

setup(
    version=version,
    packages=find_packages(include=["perfloss", "perfloss.*"]) + ["perfloss.kernels"],
    package_dir={"perfloss.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
