// What the CUDA kernels of the loss heads and the PGN stages share (csrc/cuda/{feature_distance,gram,
// style_loss,pgn_input,pgn_output}.cu): warp and block sums and the second level of the deterministic
// per-sample sums (launch shape and ElemType: launch.cuh; element conversions: element_types.h). No torch
// headers: nvcc compiles each .cu standalone.
#pragma once

#include "cuda/launch.cuh"
#include "element_types.h"

#include <cstdint>

#ifdef __CUDACC__

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace perfloss {
namespace cuda {

constexpr int kWarp = 32;

// Sum over the `width` lanes of each aligned group of a warp (width a power of two <= 32); every
// lane of the group gets the sum. All 32 lanes must call it. A fixed butterfly: deterministic.
template <int WIDTH, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int o = WIDTH / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, WIDTH);
  return v;
}

// Sum over the block (THREADS threads, a multiple of 32); the result is valid in thread 0. Every
// thread must call it; it synchronises before returning, so it may be called again in a loop.
template <int THREADS, typename T>
__device__ __forceinline__ T block_sum(T v) {
  static_assert(THREADS % kWarp == 0 && THREADS <= kWarp * kWarp, "block_sum: THREADS");
  __shared__ T warp_sums[THREADS / kWarp];
  v = group_sum<kWarp>(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < THREADS / kWarp ? warp_sums[lane] : T(0);
    v = group_sum<kWarp>(v);
  }
  __syncthreads();
  return v;
}


// values[b] = scale * sum_t partials[b * per_sample + t], summed in double in a fixed order: the
// second level of the per-sample sums (the first is one partial per block of the producing kernel).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const acc_t* partials, int64_t batch, int64_t per_sample, double scale, acc_t* values) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    double s = 0.0;
    for (int64_t t = threadIdx.x; t < per_sample; t += kThreads) s += static_cast<double>(partials[b * per_sample + t]);
    s = block_sum<kThreads>(s);
    if (threadIdx.x == 0) values[b] = static_cast<acc_t>(s * scale);
  }
}

template <typename acc_t>
void launch_reduce_partials(const acc_t* partials, int64_t batch, int64_t per_sample, double scale, acc_t* values,
                            cudaStream_t stream) {
  if (batch == 0) return;
  reduce_partials_kernel<acc_t><<<grid_for(batch), kThreads, 0, stream>>>(partials, batch, per_sample, scale, values);
}

}  // namespace cuda
}  // namespace perfloss

#endif  // __CUDACC__
