// perfloss::pgn_input on CUDA: the launcher the glue (pgn_input_ops.cpp) calls.
#pragma once

#include "cuda/loss_common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace cuda {

// out (N, 2C, H, W), channels_last, type `out_t`: channel c is (y_hat if c < C else y)[:, c % C] *
// scale[c] + shift[c] in fp32. y_hat and y: NCHW-contiguous, type `in_t`; scale and shift: 2C floats.
void launch_pgn_input(ElemType in_t, ElemType out_t, const void* y_hat, const void* y, const float* scale,
                      const float* shift, void* out, int64_t N, int64_t C, int64_t HW, cudaStream_t stream);

}  // namespace cuda
}  // namespace perfloss
