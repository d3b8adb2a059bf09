// perfloss::gram on CUDA: the epilogue after the batched GEMM (gram_ops.cpp runs the GEMM with cuBLAS
// through ATen's bmm).
#pragma once

#include "cuda/loss_common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace cuda {

// out[b, i, j] = scale * gram[b, min(i, j), max(i, j)] in out's type `t`: the product of the GEMM
// (B, C, C, contiguous, in the accumulation type: float, double for kDouble) normalised, made exactly
// symmetric (a GEMM need not round G_ij and G_ji alike) and rounded once.
void launch_gram_epilogue(ElemType t, const void* gram, void* out, int64_t B, int64_t C, double scale,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace perfloss
