"""Build perfloss and its C++ extension perfloss._C (the CPU kernels in csrc/).

If torch is not importable at build time the package installs without the extension and runs its
plain-PyTorch references on CPU (``perfloss.backend_info()`` says so).
"""
import glob
import os

from setuptools import setup

def _extensions():
    try:
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
    ext = cpp_extension.CppExtension("perfloss._C", cpu_sources, extra_compile_args=extra,
                                     extra_link_args=["-fopenmp"])
    # py_limited_api would need torch's stable ABI; the extension is built per torch version instead.
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=["perfloss", "perfloss.ops", "perfloss.backbones", "perfloss.losses", "perfloss.engine",
              "perfloss.pgn", "perfloss.models",
              "perfloss.kernels"],
    package_dir={"perfloss.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
