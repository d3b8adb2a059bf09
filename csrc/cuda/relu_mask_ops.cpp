// perfloss::relu_mask / relu_mask_ / relu_mask_backward for CUDA tensors: the torch glue of
// csrc/cuda/relu_mask.cu (checks, outputs laid out as the CPU kernels lay them out, the launch).
#include "cuda/glue.h"
#include "cuda/relu_mask.cuh"
#include "lean_common.h"

namespace perfloss {
namespace lean {
namespace {

using cuda::check_cuda;
using cuda::check_same_device;

// y = activation(x) (y may be x), mask = packed x > 0 of the first n_keep elements; x dense.
void relu_mask_launch(const at::Tensor& x, const at::Tensor& y, const at::Tensor& mask, double negative_slope,
                      int64_t n_keep, const char* op) {
  launch_relu_mask(cuda::elem_type(x.scalar_type(), op, "x"), x.const_data_ptr(), y.mutable_data_ptr(),
                   mask.mutable_data_ptr<uint8_t>(), x.numel(), n_keep, negative_slope, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> relu_mask_cuda(const at::Tensor& x_in, double negative_slope, int64_t keep) {
  check_cuda(x_in, "relu_mask", "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in);
  const int64_t n_keep = kept_elements(x, keep, "relu_mask");
  at::Tensor y = at::empty_like(x);
  at::Tensor mask = at::empty({packed_bytes(n_keep, 1)}, x.options().dtype(at::kByte));
  relu_mask_launch(x, y, mask, negative_slope, n_keep, "relu_mask");
  return {y, mask};
}

at::Tensor relu_mask_inplace_cuda(at::Tensor& x, double negative_slope, int64_t keep) {
  check_cuda(x, "relu_mask_", "x");
  TORCH_CHECK(x.is_contiguous() || work_channels_last(x), "relu_mask_: x must be contiguous or channels_last");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n_keep = kept_elements(x, keep, "relu_mask_");
  at::Tensor mask = at::empty({packed_bytes(n_keep, 1)}, x.options().dtype(at::kByte));
  relu_mask_launch(x, x, mask, negative_slope, n_keep, "relu_mask_");
  return mask;
}

at::Tensor relu_mask_backward_cuda(const at::Tensor& grad_in, const at::Tensor& mask_in, double negative_slope) {
  check_cuda(grad_in, "relu_mask_backward", "grad");
  check_same_device(mask_in, "relu_mask_backward", "mask", grad_in, "grad");
  TORCH_CHECK(mask_in.scalar_type() == at::kByte, "relu_mask_backward: mask must be uint8, got ",
              mask_in.scalar_type());
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = dense(grad_in);
  const at::Tensor mask = mask_in.contiguous();
  const int64_t n = grad.numel();
  TORCH_CHECK(mask.numel() == packed_bytes(n, 1), "relu_mask_backward: mask has ", mask.numel(), " bytes, expected ",
              packed_bytes(n, 1), " (one bit per element of grad)");
  at::Tensor out = at::empty_like(grad);
  launch_relu_mask_backward(cuda::elem_type(grad.scalar_type(), "relu_mask_backward", "grad"), grad.const_data_ptr(),
                            mask.const_data_ptr<uint8_t>(), out.mutable_data_ptr(), n, negative_slope,
                            c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("relu_mask", &relu_mask_cuda);
  m.impl("relu_mask_", &relu_mask_inplace_cuda);
  m.impl("relu_mask_backward", &relu_mask_backward_cuda);
}

}  // namespace lean
}  // namespace perfloss
