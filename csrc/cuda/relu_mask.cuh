// perfloss::relu_mask / relu_mask_ / relu_mask_backward, CUDA kernels (launchers only: no torch types).
// The element type is `t`'s (launch.cuh); sizes are element counts in the working layout's memory
// order (see csrc/lean_math.h for the per-element math, shared with the CPU kernels).
#pragma once

#include "cuda/launch.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace lean {

// y = activation(x) over n elements (y may be x: in place), mask = packed x > 0 of the first n_keep
// elements (ceil(n_keep / 8) bytes).
void launch_relu_mask(cuda::ElemType t, const void* x, void* y, uint8_t* mask, int64_t n, int64_t n_keep,
                      double negative_slope, cudaStream_t stream);

// grad_in = grad where the mask bit is set, else +0 / negative_slope * grad, over n elements.
void launch_relu_mask_backward(cuda::ElemType t, const void* grad, const uint8_t* mask, void* grad_in, int64_t n,
                               double negative_slope, cudaStream_t stream);

}  // namespace lean
}  // namespace perfloss
