"""Build perfloss and its C++ extension perfloss._C.

CPU kernels (csrc/*.cpp) are always built. CUDA kernels (csrc/cuda/*.cu with their torch glue in
csrc/cuda/*.cpp) are built when the installed torch has CUDA and nvcc is found, or when forced with
PERFLOSS_BUILD_CUDA=1 (PERFLOSS_BUILD_CUDA=0 turns them off). Target architectures come from
TORCH_CUDA_ARCH_LIST or PERFLOSS_CUDA_ARCHS ("8.0;9.0"). If torch is not importable at build time the
package installs without the extension and runs on its plain-PyTorch paths.
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch):
    forced = os.environ.get("PERFLOSS_BUILD_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def _extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    if not cpu_sources:
        return [], {}
    cxx_flags = ["-O3"]  # torch picks the C++ standard its headers need
    if os.name != "nt":
        cxx_flags += ["-fopenmp"]
    extra = {"cxx": cxx_flags}
    if _want_cuda(torch):
        archs = os.environ.get("PERFLOSS_CUDA_ARCHS")
        if archs and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources = cpu_sources + sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo"]
        ext = cpp_extension.CUDAExtension(
            "perfloss._C", sources, extra_compile_args=extra, extra_link_args=["-fopenmp"],
            define_macros=[("PERFLOSS_WITH_CUDA", "1")],
        )
    else:
        ext = cpp_extension.CppExtension(
            "perfloss._C", cpu_sources, extra_compile_args=extra, extra_link_args=["-fopenmp"]
        )
    # py_limited_api would need torch's stable ABI; the extension is built per torch version instead.
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=["perfloss", "perfloss.ops", "perfloss.backbones", "perfloss.losses", "perfloss.engine",
              "perfloss.pgn",
              "perfloss.kernels"],
    package_dir={"perfloss.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
