// perfloss::sign_pack / sign_unpack, CUDA kernels (launchers only: no torch types). T is float, double,
// __half or __nv_bfloat16; elements are in the working layout's memory order (see csrc/lean_math.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace lean {

// codes = the 2-bit sign codes of g's n elements (ceil(n / 4) bytes).
template <typename T>
void launch_sign_pack(const T* g, uint8_t* codes, int64_t n, cudaStream_t stream);

// out[e] = grad_values[e / per_sample] * (sign[e] * scale) over n elements; scale is one element in
// device memory (read there: no host synchronisation), grad_values one per sample, both of type T.
template <typename T>
void launch_sign_unpack(const uint8_t* codes, const T* scale, const T* grad_values, T* out, int64_t n,
                        int64_t per_sample, cudaStream_t stream);

}  // namespace lean
}  // namespace perfloss
