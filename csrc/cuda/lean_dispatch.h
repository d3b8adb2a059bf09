// What the torch glue of the lean engine's CUDA kernels (csrc/cuda/{relu_mask,maxpool_codes,sign_pack}_ops.cpp)
// shares: argument checks and the dtype dispatch from a torch dtype to the CUDA element type.
#pragma once

#include "lean_common.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace perfloss {
namespace lean {

template <typename T>
struct Element {
  using type = T;
};

// f(Element<T>{}) with T the CUDA element type of dtype t (float, double, __half, __nv_bfloat16).
template <typename F>
void dispatch_element(at::ScalarType t, const char* op, const char* arg, F&& f) {
  switch (t) {
    case at::kFloat: return f(Element<float>{});
    case at::kDouble: return f(Element<double>{});
    case at::kHalf: return f(Element<__half>{});
    case at::kBFloat16: return f(Element<__nv_bfloat16>{});
    default: TORCH_CHECK(false, op, ": ", arg, " must be float32, float64, float16 or bfloat16, got ", t);
  }
}

// Argument `arg` of `op` is a CUDA tensor.
inline void check_cuda(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor, got one on ", t.device());
}

// Argument `arg` of `op` is a CUDA tensor on the device of argument `ref_arg` (`ref`).
inline void check_same_device(const at::Tensor& t, const char* op, const char* arg, const at::Tensor& ref,
                              const char* ref_arg) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ", ref_arg, " is on ",
              ref.device(), "; expected both on one CUDA device");
}

template <typename T>
const T* data_of(const at::Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* mutable_data_of(const at::Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

}  // namespace lean
}  // namespace perfloss
