// perfloss::sign_pack / sign_unpack, CUDA kernels (launchers only: no torch types). The element type is
// `t`'s (launch.cuh); elements are in the working layout's memory order (see csrc/lean_math.h).
#pragma once

#include "cuda/launch.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace lean {

// codes = the 2-bit sign codes of g's n elements (ceil(n / 4) bytes).
void launch_sign_pack(cuda::ElemType t, const void* g, uint8_t* codes, int64_t n, cudaStream_t stream);

// out[e] = grad_values[e / per_sample] * (sign[e] * scale) over n elements; scale is one element in
// device memory (read there: no host synchronisation), grad_values one per sample, both of type t.
void launch_sign_unpack(cuda::ElemType t, const uint8_t* codes, const void* scale, const void* grad_values, void* out,
                        int64_t n, int64_t per_sample, cudaStream_t stream);

}  // namespace lean
}  // namespace perfloss
