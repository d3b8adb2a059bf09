#!/usr/bin/env bash
# Install a built wheel into a fresh virtual environment and run .ci/wheel_smoke.py there, from outside the
# repository (so the installed wheel is what imports).
#   bash .ci/wheel_smoke.sh dist/perfloss-....whl [TORCH_SPEC]   (TORCH_SPEC default torch==2.13.0)
set -euo pipefail
wheel=$(cd "$(dirname "${1:?usage: wheel_smoke.sh WHEEL [TORCH_SPEC]}")" && pwd)/$(basename "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python -m venv "$venv"
"$venv/bin/pip" install -q "${2:-torch==2.13.0}"
"$venv/bin/pip" install -q "$wheel"
cd "$venv" && "$venv/bin/python" "$repo/.ci/wheel_smoke.py"
