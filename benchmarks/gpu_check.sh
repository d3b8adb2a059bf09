#!/usr/bin/env bash
# The whole GPU check in one command, for a bare GPU machine that has torch, Triton, pytest (with
# pytest-timeout and pytest-xdist), hypothesis and tqdm, and no network:
#
#   bash benchmarks/gpu_check.sh WHEELS [RESULTS]        (RESULTS default: benchmarks/results/gpu_check)
#
# WHEELS is a folder holding, made beforehand on a machine with a network:
#   - the perfloss CUDA wheel: PERFLOSS_CUDA_ARCHS=9.0 bash .ci/build_wheels.sh cuda WHEELS (sm_90 only: H100/H200);
#   - lpips's, for LPIPS's linear weights: pip download --no-deps --only-binary=:all: -d WHEELS lpips==0.1.4.
# perfloss is installed from that wheel, not built on the GPU machine: the first GPU run built it with
# that machine's /opt/gcc g++, whose extension crashed on error messages (benchmarks/results/gpu/README.md;
# setup.py now refuses such a build).
#
# 1. the CUDA-marked tests: every op on its C++ CUDA kernel, Triton and the reference; the benchmark
#    losses lean against eager and float64 on each implementation; torch.compile; PGN CUDA graphs;
# 2. issue 9's GPU item at 256x256 batch 16, fp32 and bf16 autocast: the peak-memory sweep (with the lean
#    engine at several chunk sizes, to tune its CUDA memory budget, with and without its chunks recorded
#    as CUDA graphs (+graphs); with the target images in a pass of their own; and on the C++ CUDA kernels
#    in place of Triton's), the host time a chunk costs (benchmarks/chunk_host_time.py) and the training step;
# 3. C++ CUDA vs Triton vs eager (and torch.compile) per loss op: benchmarks/loss_ops_gpu.py;
# 4. the ops' C++ CUDA tests under compute-sanitizer memcheck;
# 5. perfloss bench (every engine, torch.compile too), the PGN benchmark, the > 2^31-element tests.
# Each step has its own time limit and log under RESULTS, cut to what is left of PERFLOSS_GPU_CHECK_SECONDS
# (default 560) since the start; a failing step does not stop the next, and RESULTS/steps.txt lists each
# step's exit code and seconds. PERFLOSS_GPU_CHECK_ONLY="memcheck bench_fp32 ..." runs only the steps
# named (the install always runs): a second, shorter call for what the first one's deadline cut.
# pytest is stopped with SIGINT, so a run cut short still prints its failures.
# Where $OUT is set (the device tool), RESULTS is packed into $OUT/gpu_check.tar.gz after every step.
# Tests and `perfloss bench` run outside the checkout, so they import the installed wheel, not ./perfloss.
set -uo pipefail
wheels=$(cd "${1:?usage: gpu_check.sh WHEELS [RESULTS]}" && pwd)
cd "$(dirname "$0")/.."
repo=$(pwd)
out=$(mkdir -p "${2:-benchmarks/results/gpu_check}" && cd "${2:-benchmarks/results/gpu_check}" && pwd)
: > "$out/steps.txt"
py=$(command -v python3 || command -v python)
start_all=$(date +%s)
deadline=$(( start_all + ${PERFLOSS_GPU_CHECK_SECONDS:-560} ))
export PERFLOSS_TEST_GPU=1 PYTHONUNBUFFERED=1

pack() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
    cp "$out/steps.txt" "$OUT/steps.txt"
  fi
}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to RESULTS/NAME.log, record rc and seconds
  local name=$1 limit=$2 start rc left
  shift 2
  start=$(date +%s)
  left=$(( deadline - start ))
  if [ -n "${PERFLOSS_GPU_CHECK_ONLY:-}" ] && [ "$name" != install ] && [[ " $PERFLOSS_GPU_CHECK_ONLY " != *" $name "* ]]; then
    return 0
  fi
  if [ "$left" -lt 15 ]; then
    echo "$name skipped: ${left}s left of the check's time" | tee -a "$out/steps.txt"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout -s INT --kill-after=15 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s (limit ${limit}s)" | tee -a "$out/steps.txt"
  [ "$rc" -ne 0 ] && tail -n 15 "$out/$name.log"
  pack
}

tests=(env -C "$repo/tests")  # pytest from tests/: the rootdir's config, and the installed perfloss

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())'
  "$py" -c 'import triton; print("triton", triton.__version__)'
  nvcc --version | tail -1
  echo "cores $(nproc)"
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  echo "ImageNet weights in ~/.cache/torch/hub/checkpoints:"
  ls -la ~/.cache/torch/hub/checkpoints 2>&1
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

step install 60 "$py" -m pip install --no-deps --no-index "$wheels"/*.whl
env -C /tmp "$py" -c 'import json, perfloss; print(perfloss.__file__); print(json.dumps(perfloss.backend_info(), indent=1))' \
  > "$out/backend_info.json" 2>&1
cat "$out/backend_info.json"

step tests_cuda 240 "${tests[@]}" "$py" -m pytest . -m cuda -q -p no:cacheprovider --timeout 120 -n 16 -rf --tb=short

sweep=("$py" benchmarks/peak_batch_sweep.py --device cuda --size 256 --batches 16 --repeat 5)
step peak_sweep_fp32 110 "${sweep[@]}" --engines eager lean lean:1 lean:2 lean:4 lean:8 lean:16 checkpoint \
  lean+graphs lean:1+graphs lean:2+graphs \
  --out "$out/peak_batch_sweep_cuda"
step chunk_host_time 30 "$py" benchmarks/chunk_host_time.py --device cuda --graphs --out "$out/chunk_host_time_cuda"
step peak_sweep_bf16 70 "${sweep[@]}" --engines eager lean lean:1 lean:4 checkpoint lean:1+graphs lean:4+graphs \
  --autocast bfloat16 \
  --out "$out/peak_batch_sweep_cuda_autocast_bfloat16"
step train_step 90 "$py" benchmarks/train_step.py --device cuda --size 256 --batch 16 --repeat 5 \
  --budget-mib 24576 --out "$out/train_step_cuda"
# the target images in a pass of their own with deeper levels (CPUs' way) against riding in the chunk;
# in chunks of two (predicted on CPU to meet three of the four targets) also recorded, target pass and all
step peak_sweep_fp32_split 60 "${sweep[@]}" --engines eager lean:1 lean:2 lean:4 lean:2+graphs --target-pass split \
  --out "$out/peak_batch_sweep_cuda_split_target_pass"
step peak_sweep_fp32_cpp 40 env PERFLOSS_IMPL=cpp "${sweep[@]}" --engines lean \
  --out "$out/peak_batch_sweep_cuda_cpp_kernels"  # the lean engine on the C++ CUDA kernels, against Triton's above
step loss_ops 90 "$py" benchmarks/loss_ops_gpu.py --quick --out "$out"
if command -v compute-sanitizer > /dev/null; then
  step memcheck 45 "${tests[@]}" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$py" -m pytest test_relu_mask.py test_maxpool_codes.py test_sign_pack.py test_feature_distance.py \
    test_gram.py test_style_loss.py test_pgn_input.py test_pgn_output.py -m cuda -k cpp -q -p no:cacheprovider -x
fi
step bench_fp32 90 env -C /tmp "$py" -m perfloss bench --device cuda --size 256 --batch 16 --repeat 10 \
  --json "$out/bench_cuda_fp32.json" --csv "$out/bench_cuda_fp32.csv"
step pgn 30 "$py" benchmarks/pgn_gpu.py --device cuda --out "$out"
step tests_large 60 "${tests[@]}" PERFLOSS_TEST_LARGE=1 "$py" -m pytest . -m cuda -k "2_31 or large" -q \
  -p no:cacheprovider --timeout 120 -rf --tb=short
echo "results in $out; $(( $(date +%s) - start_all ))s in all"
pack
