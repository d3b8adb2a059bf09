// What the torch glue of the loss heads' and PGN stages' CUDA kernels shares (csrc/cuda/{feature_distance,
// gram,style_loss,pgn_input,pgn_output}_ops.cpp, compiled by the host compiler) shares besides glue.h:
// the unnormalised Gram product by cuBLAS.
//
// TF32: the Gram GEMMs are ATen's bmm, so fp32 features use TF32 tensor cores exactly when torch's own
// matmuls do (torch.backends.cuda.matmul.allow_tf32 / torch.set_float32_matmul_precision; off by
// default), which is also what the Triton kernels follow.
#pragma once

#include "cuda/glue.h"

namespace perfloss {
namespace cuda {

// G = F F^T per sample for F (B, C, N) in the accumulation type (B, C, C), contiguous: one batched
// GEMM. fp16 / bf16 features go in as they are and come out in fp32 (cuBLAS accumulates in fp32).
inline at::Tensor unnormalised_gram(const at::Tensor& F) {
  const at::ScalarType acc = acc_type(F.scalar_type());
  const at::Tensor Ft = F.transpose(1, 2);
  return (F.scalar_type() == acc ? at::bmm(F, Ft) : at::bmm(F, Ft, acc)).contiguous();
}

}  // namespace cuda
}  // namespace perfloss
