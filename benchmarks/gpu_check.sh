#!/usr/bin/env bash
# The whole GPU check in one command, for a bare GPU machine that has torch, Triton and nvcc (no network):
#
#   bash benchmarks/gpu_check.sh [OUT]        (OUT default: $OUT, else benchmarks/results/gpu_check)
#
# 1. builds perfloss from this tree with its CUDA kernels for the local GPU's arch (editable, --no-deps);
# 2. runs the CUDA-marked tests (every op on its C++ CUDA kernel, Triton and the reference);
# 3. runs the ops' C++ CUDA tests under compute-sanitizer memcheck, where it is installed;
# 4. compares C++ CUDA vs Triton vs eager (and torch.compile) per op: benchmarks/loss_ops_gpu.py;
# 5. perfloss bench at 256x256 batch 16, fp32 and bf16 autocast; the peak-memory sweep and the training
#    step at 256x256 (issue 9's GPU item); the PGN benchmark.
# Every step has its own time limit and log under OUT; a failing step does not stop the next, and
# OUT/steps.txt lists each step's exit code and seconds. The limits add up to under 9 minutes on an H100/H200.
# pytest, hypothesis, pytest-timeout and tqdm come from ./.wheelhouse when the machine lacks them
# (fill it beforehand: pip download -d .wheelhouse --only-binary=:all: --python-version 3.12 pytest
# pytest-timeout hypothesis tqdm).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu_check}}
mkdir -p "$out"
: > "$out/steps.txt"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s (limit ${limit}s)" | tee -a "$out/steps.txt"
}

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  python -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())'
  python -c 'import triton; print("triton", triton.__version__)'
  nvcc --version | tail -1
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  echo "ImageNet weights in ~/.cache/torch/hub/checkpoints:"
  ls -la ~/.cache/torch/hub/checkpoints 2>&1
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

missing=$(python -c 'import importlib.util as u; print(" ".join(m for m in ("pytest", "pytest_timeout", "hypothesis", "tqdm") if u.find_spec(m) is None))')
if [ -n "$missing" ] && [ -d .wheelhouse ]; then
  python -m pip install -q --no-index --find-links .wheelhouse pytest pytest-timeout hypothesis tqdm
fi

arch=$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
step build 150 env PERFLOSS_CUDA=1 PERFLOSS_CUDA_ARCHS="$arch" MAX_JOBS="$(nproc)" \
  python -m pip install --no-build-isolation --no-deps -e .
python -c 'import json, perfloss; print(json.dumps(perfloss.backend_info(), indent=1))' > "$out/backend_info.json" 2>&1

export PERFLOSS_TEST_GPU=1
step tests_cuda 110 python -m pytest tests -m cuda -q -p no:cacheprovider --timeout 60
if command -v compute-sanitizer > /dev/null; then
  step memcheck 40 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python -m pytest tests/test_relu_mask.py tests/test_maxpool_codes.py tests/test_sign_pack.py \
    tests/test_feature_distance.py tests/test_gram.py tests/test_style_loss.py tests/test_pgn_input.py \
    tests/test_pgn_output.py -m cuda -k cpp -q -p no:cacheprovider -x
fi
step loss_ops 55 python benchmarks/loss_ops_gpu.py --quick --out "$out"
for precision in fp32 bf16; do
  autocast=(); [ "$precision" = bf16 ] && autocast=(--autocast bfloat16)
  step "bench_$precision" 30 python -m perfloss bench --device cuda --size 256 --batch 16 --repeat 10 "${autocast[@]}" \
    --json "$out/bench_cuda_$precision.json" --csv "$out/bench_cuda_$precision.csv"
  step "peak_sweep_$precision" 30 python benchmarks/peak_batch_sweep.py --device cuda --size 256 --batches 16 \
    --repeat 5 "${autocast[@]}" --out "$out/peak_batch_sweep_cuda_$precision"
done
step train_step 30 python benchmarks/train_step.py --device cuda --size 256 --batch 16 --repeat 5 --out "$out/train_step_cuda"
step pgn 20 python benchmarks/pgn_gpu.py --device cuda --out "$out"
echo "results in $out"
