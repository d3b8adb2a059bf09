// perfloss::gram for CUDA tensors: one batched GEMM by cuBLAS (ATen's bmm, in the accumulation type;
// the features' NCHW or channels_last layout is passed to cuBLAS as it is, without a copy) and the
// epilogue of gram.cu (normalise, symmetrise, round once to the features' dtype). A full GEMM does
// twice the FLOPs of a SYRK, but needs no cuBLAS handle of our own and is what eager's bmm does.
#include "cuda/gram.cuh"
#include "cuda/loss_ops.h"
#include "loss_common.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace perfloss {
namespace {

at::Tensor gram_cuda(const at::Tensor& features, bool normalize) {
  loss::check_features(features, "features", at::kCUDA);
  const cuda::ElemType t = cuda::elem_type(features.scalar_type(), "gram", "features");
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), N = features.size(2) * features.size(3);
  const at::Tensor x = dense(features);
  const at::Tensor G = cuda::unnormalised_gram(x.view({B, C, N}));
  at::Tensor out = at::empty({B, C, C}, features.options());
  const double scale = normalize ? 1.0 / static_cast<double>(C * N) : 1.0;
  cuda::launch_gram_epilogue(t, G.data_ptr(), out.data_ptr(), B, C, scale, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("gram", &perfloss::gram_cuda);
}
