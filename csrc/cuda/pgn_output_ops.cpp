// perfloss::pgn_output for CUDA tensors: the reference's argument handling (offset moved to the device
// as fp32; gain and coef applied in fp32), proxy and grad allocated as the fake kernel does (y_hat's
// dtype, out's working layout), then the kernel of pgn_output.cu.
#include "cuda/loss_ops.h"
#include "cuda/pgn_output.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace perfloss {
namespace {

std::tuple<at::Tensor, at::Tensor> pgn_output_cuda(const at::Tensor& out, const at::Tensor& y_hat,
                                                   const at::Tensor& offset, double gain, double coef) {
  TORCH_CHECK(out.dim() == 4, "out must have shape (N, C, H, W), got ", out.sizes());
  TORCH_CHECK(y_hat.sizes() == out.sizes(), "y_hat must have the shape of out ", out.sizes(), ", got ", y_hat.sizes());
  TORCH_CHECK(out.is_cuda() && y_hat.device() == out.device(), "out and y_hat must be on one CUDA device, got ",
              out.device(), " and ", y_hat.device());
  const int64_t N = out.size(0), C = out.size(1), HW = out.size(2) * out.size(3);
  TORCH_CHECK(offset.numel() == C, "offset must have shape (", C, ",), got ", offset.sizes());
  const cuda::ElemType out_t = cuda::elem_type(out.scalar_type(), "pgn_output", "out");
  const cuda::ElemType y_t = cuda::elem_type(y_hat.scalar_type(), "pgn_output", "y_hat");
  const c10::cuda::CUDAGuard guard(out.device());
  const bool cl = work_channels_last(out);
  const at::MemoryFormat fmt = memory_format_of(cl);
  const at::Tensor o = out.contiguous(fmt);
  const at::Tensor yh = y_hat.contiguous(fmt);
  const at::Tensor off = offset.to(out.device(), at::kFloat).contiguous();
  at::Tensor proxy = at::empty_like(y_hat, y_hat.options(), fmt);
  at::Tensor grad = at::empty_like(y_hat, y_hat.options(), fmt);
  cuda::launch_pgn_output(out_t, y_t, cl, o.data_ptr(), yh.data_ptr(), off.data_ptr<float>(), proxy.data_ptr(),
                          grad.data_ptr(), N, C, HW, static_cast<float>(gain), static_cast<float>(coef),
                          c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {proxy, grad};
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("pgn_output", &perfloss::pgn_output_cuda);
}
