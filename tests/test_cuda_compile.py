"""Every CUDA kernel file (csrc/cuda/*.cu) compiles with nvcc for sm_80 and sm_90 on a machine without
a GPU, and the extension's sources stay free of the full Python / pybind11 APIs (the wheel is abi3).

Each .cu is plain CUDA that nvcc compiles without torch's headers; it is compiled here with the
half / bfloat16 flags torch's CUDAExtension adds (no implicit conversions), one nvcc call per file
with both -gencode targets, two files at a time.
"""
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
ARCHS = (80, 90)
# what torch.utils.cpp_extension passes to nvcc for every CUDAExtension
TORCH_NVCC_DEFINES = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__")


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidate = Path(home, "bin", "nvcc") if home else None
    return str(candidate) if candidate is not None and candidate.is_file() else None


def _compile(nvcc, source, out_dir):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [nvcc, "-std=c++17", "-O3", "-c", *gencode, *TORCH_NVCC_DEFINES, "-I", str(CSRC), str(source),
           "-o", str(out_dir / (source.stem + ".o"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return source.name, proc.returncode, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found on PATH or in CUDA_HOME/bin")
def test_every_cu_file_compiles_for_sm80_and_sm90(tmp_path):
    sources = sorted((CSRC / "cuda").glob("*.cu"))
    assert sources, "no csrc/cuda/*.cu files"
    nvcc = _nvcc()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda s: _compile(nvcc, s, tmp_path), sources))
    failed = [f"{name} (exit {rc}):\n{log}" for name, rc, log in results if rc != 0]
    assert not failed, "\n\n".join(failed)


_FORBIDDEN = re.compile(r'^\s*#\s*include\s*[<"](Python\.h|pybind11/[^>"]*|torch/extension\.h)[>"]', re.M)


def test_no_python_or_pybind11_headers_in_csrc():
    """Only csrc/extension.cpp includes Python.h (its limited API); nothing includes pybind11 or
    torch/extension.h (which pulls in pybind11 and the full Python API)."""
    offenders = []
    for path in sorted(CSRC.rglob("*")):
        if not path.is_file() or path.suffix not in (".h", ".hpp", ".cuh", ".c", ".cc", ".cpp", ".cu"):
            continue
        for header in _FORBIDDEN.findall(path.read_text(errors="replace")):
            if not (header == "Python.h" and path == CSRC / "extension.cpp"):
                offenders.append(f"{path.relative_to(CSRC)} includes {header}")
    assert not offenders, offenders
