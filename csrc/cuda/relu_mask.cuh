// perfloss::relu_mask / relu_mask_ / relu_mask_backward, CUDA kernels (launchers only: no torch types).
// T is float, double, __half or __nv_bfloat16; sizes are element counts in the working layout's memory
// order (see csrc/lean_math.h for the per-element math, shared with the CPU kernels).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace lean {

// y = activation(x) over n elements (y may be x: in place), mask = packed x > 0 of the first n_keep
// elements (ceil(n_keep / 8) bytes).
template <typename T>
void launch_relu_mask(const T* x, T* y, uint8_t* mask, int64_t n, int64_t n_keep, double negative_slope,
                      cudaStream_t stream);

// grad_in = grad where the mask bit is set, else +0 / negative_slope * grad, over n elements.
template <typename T>
void launch_relu_mask_backward(const T* grad, const uint8_t* mask, T* grad_in, int64_t n, double negative_slope,
                               cudaStream_t stream);

}  // namespace lean
}  // namespace perfloss
