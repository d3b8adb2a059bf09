// perfloss::feature_distance for CUDA tensors: checks, layout and allocation as the CPU kernel
// (csrc/feature_distance.cpp) does them, then the kernels of feature_distance.cu.
#include "cuda/feature_distance.cuh"
#include "cuda/loss_ops.h"
#include "loss_common.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace perfloss {
namespace {

std::tuple<at::Tensor, at::Tensor> feature_distance_cuda(const at::Tensor& f0, const at::Tensor& f1,
                                                         c10::string_view kind_view,
                                                         const std::optional<at::Tensor>& weight,
                                                         bool compute_grad) {
  const int kind = loss::check_distance_args(f0, f1, kind_view, weight, at::kCUDA);
  const cuda::ElemType t = cuda::elem_type(f0.scalar_type(), "feature_distance", "f0");
  const c10::cuda::CUDAGuard guard(f0.device());
  const int64_t B = f0.size(0), C = f0.size(1), P = f0.size(2) * f0.size(3);
  const at::ScalarType vt = acc_type(f0.scalar_type());
  at::Tensor w;
  if (weight.has_value() && weight->defined()) w = weight->detach().to(vt).contiguous();
  const bool cl = work_channels_last(f0);
  const at::Tensor a = f0.contiguous(memory_format_of(cl));
  const at::Tensor b = f1.contiguous(memory_format_of(cl));
  at::Tensor values = at::empty({B}, f0.options().dtype(vt));
  at::Tensor partials = at::empty({cuda::feature_distance_partials(kind, cl, B, C, P)}, f0.options().dtype(vt));
  loss::GradOut grad;
  if (compute_grad) grad = loss::make_grad(f0, cl);
  cuda::launch_feature_distance(t, kind, cl, a.data_ptr(), b.data_ptr(), compute_grad ? grad.work.data_ptr() : nullptr,
                                w.defined() ? w.data_ptr() : nullptr, partials.data_ptr(), values.data_ptr(), B, C, P,
                                c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!compute_grad) return {values, f0.new_empty({0})};
  return {values, loss::finish_grad(grad)};
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("feature_distance", &perfloss::feature_distance_cuda);
}
