// perfloss::maxpool_codes / maxpool_unroute, CUDA kernels (launchers only: no torch types). The element
// type is `t`'s (launch.cuh); strides are in elements; codes are packed in the memory order of the
// output, NCHW or (channels_last) NHWC (see csrc/lean_math.h for the window math, shared with the CPU
// kernels).
#pragma once

#include "cuda/launch.cuh"
#include "lean_math.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace lean {

// Sizes and element strides of a 4-D tensor (N, C, H, W), in any layout.
struct Dims4 {
  int64_t n, c, h, w;
  int64_t s0, s1, s2, s3;
};

// y = max_pool2d(x) (y of sizes (x.n, x.c, OH, OW) with its own strides), codes = the windows' argmax
// codes of the first n_keep outputs in NCHW order, or NHWC order when channels_last, at `bits` bits per
// code.
void launch_maxpool_codes(cuda::ElemType t, const void* x, Dims4 x_dims, void* y, Dims4 y_dims, bool channels_last,
                          uint8_t* codes, int64_t n_keep, int64_t bits, PoolGeometry g, cudaStream_t stream);

// grad_in (dense, grad.n x grad.c x H x W, NCHW or, when channels_last, NHWC: the codes' order) = the
// gradient routed back from the codes: each input element gathers, in the order of the output windows,
// the gradients whose code points at it.
void launch_maxpool_unroute(cuda::ElemType t, const void* grad, Dims4 grad_dims, bool channels_last, const uint8_t* codes,
                            int64_t bits, void* grad_in, int64_t H, int64_t W, PoolGeometry g, cudaStream_t stream);

}  // namespace lean
}  // namespace perfloss
