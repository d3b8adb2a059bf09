// perfloss::pgn_output on CUDA: the launcher the glue (pgn_output_ops.cpp) calls.
#pragma once

#include "cuda/loss_common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace cuda {

// proxy = gain * sigmoid(out) + offset[c] and grad = coef * (y_hat - proxy), in fp32, stored in
// y_hat's type `y_t`. out (type `out_t`), y_hat, proxy and grad are (N, C, H, W), dense in one layout
// (channels_last or NCHW-contiguous); offset: C floats.
void launch_pgn_output(ElemType out_t, ElemType y_t, bool channels_last, const void* out, const void* y_hat,
                       const float* offset, void* proxy, void* grad, int64_t N, int64_t C, int64_t HW, float gain,
                       float coef, cudaStream_t stream);

}  // namespace cuda
}  // namespace perfloss
