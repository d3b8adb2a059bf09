// What the torch glue of every CUDA op (csrc/cuda/*_ops.cpp, compiled by the host compiler) shares: the
// launchers' element type of a dtype, and the device checks.
#pragma once

#include "common.h"
#include "cuda/launch.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace perfloss {
namespace cuda {

// Argument `arg` of `op` has dtype t: its launchers' element type.
inline ElemType elem_type(at::ScalarType t, const char* op, const char* arg) {
  switch (t) {
    case at::kFloat: return ElemType::kFloat;
    case at::kDouble: return ElemType::kDouble;
    case at::kHalf: return ElemType::kHalf;
    case at::kBFloat16: return ElemType::kBFloat16;
    default: TORCH_CHECK(false, op, ": ", arg, " must be float32, float64, float16 or bfloat16, got ", t);
  }
  return ElemType::kFloat;
}

// Argument `arg` of `op` is a CUDA tensor.
inline void check_cuda(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor, got one on ", t.device());
}

// Argument `arg` of `op` is on the device of argument `ref_arg` (`ref`).
inline void check_same_device(const at::Tensor& t, const char* op, const char* arg, const at::Tensor& ref,
                              const char* ref_arg) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ", ref_arg, " is on ",
              ref.device(), "; expected both on one CUDA device");
}

}  // namespace cuda
}  // namespace perfloss
