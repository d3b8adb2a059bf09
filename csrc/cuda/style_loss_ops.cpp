// perfloss::style_loss for CUDA tensors: forward and gradient are two batched GEMMs by cuBLAS (ATen's
// bmm / baddbmm) around one fused epilogue (style_loss.cu):
//   G = F F^T (accumulation type)  ->  values, S = D + D^T  ->  grad = (2 / (C H W)) S F,
// the gradient written straight into its memory in the features' layout (NCHW or channels_last, both
// views cuBLAS takes without a copy). S is in the features' dtype (cuBLAS multiplies like types), so
// for fp16 / bf16 features it is rounded to that dtype before the second GEMM (which accumulates in
// fp32; the Triton kernel keeps S in fp32). The factor 2 / (C H W) is the GEMM's alpha, applied in
// fp32, not folded into S: folded in, S would fall into fp16's subnormals. Checks and layout rules are
// the CPU kernel's.
#include "cuda/loss_ops.h"
#include "cuda/style_loss.cuh"
#include "loss_common.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace perfloss {
namespace {

std::tuple<at::Tensor, at::Tensor> style_loss_cuda(const at::Tensor& features, const at::Tensor& target_gram,
                                                   bool compute_grad) {
  loss::check_features(features, "features", at::kCUDA);
  loss::check_target_gram(target_gram, features);
  const cuda::ElemType t = cuda::elem_type(features.scalar_type(), "style_loss", "features");
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), N = features.size(2) * features.size(3);
  const bool cl = work_channels_last(features);
  const at::Tensor F = features.contiguous(memory_format_of(cl)).view({B, C, N});
  const at::ScalarType vt = acc_type(features.scalar_type());
  const at::Tensor G = cuda::unnormalised_gram(F);
  const at::Tensor T = target_gram.to(vt);
  const int64_t tb = T.size(0) == 1 ? 0 : T.stride(0);
  at::Tensor values = at::empty({B}, features.options().dtype(vt));
  at::Tensor partials = at::empty({cuda::style_epilogue_partials(B, C)}, features.options().dtype(vt));
  at::Tensor S;
  if (compute_grad) S = at::empty({B, C, C}, features.options());
  cuda::launch_style_epilogue(t, G.data_ptr(), T.data_ptr(), tb, T.stride(1), T.stride(2),
                              compute_grad ? S.data_ptr() : nullptr, partials.data_ptr(), values.data_ptr(), B, C,
                              1.0 / static_cast<double>(C * N), 1.0, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!compute_grad) return {values, features.new_empty({0})};
  loss::GradOut grad = loss::make_grad(features, cl);
  at::Tensor grad_rows = grad.work.view({B, C, N});
  at::baddbmm_out(grad_rows, grad_rows, S, F, /*beta=*/0, /*alpha=*/2.0 / static_cast<double>(C * N));  // beta 0: not read
  return {values, loss::finish_grad(grad)};
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("style_loss", &perfloss::style_loss_cuda);
}
