// perfloss::style_loss on CUDA: the fused epilogue between the two batched GEMMs (style_loss_ops.cpp
// runs G = F F^T and grad = S F with cuBLAS through ATen's bmm).
#pragma once

#include "cuda/loss_common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace cuda {

// Number of per-block partial sums launch_style_epilogue needs in `partials`.
int64_t style_epilogue_partials(int64_t B, int64_t C);

// From the unnormalised Gram `gram` (B, C, C, contiguous) and the target Gram `target` (read at
// b*t_sb + i*t_si + j*t_sj; t_sb = 0 for one target for the batch), both in the accumulation type:
// values[b] = sum_ij D_ij^2 with D = gram * inv_n - target, and with `s` non-null the gradient factor
// S = (D + D^T) s_scale (B, C, C, contiguous) in the features' type `t`: grad = 2 inv_n (D + D^T) F.
void launch_style_epilogue(ElemType t, const void* gram, const void* target, int64_t t_sb, int64_t t_si, int64_t t_sj,
                           void* s, void* partials, void* values, int64_t B, int64_t C, double inv_n, double s_scale,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace perfloss
