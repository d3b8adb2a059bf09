// perfloss::pgn_input for CUDA tensors: the reference's argument handling (y_hat and y concatenated
// in their promoted dtype, scale / shift moved to the device as fp32), the output allocated as the
// fake kernel does ((N, 2C, H, W), channels_last, out_dtype), then the kernel of pgn_input.cu.
#include "cuda/loss_ops.h"
#include "cuda/pgn_input.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace perfloss {
namespace {

at::Tensor pgn_input_cuda(const at::Tensor& y_hat, const at::Tensor& y, const at::Tensor& scale,
                          const at::Tensor& shift, at::ScalarType out_dtype) {
  TORCH_CHECK(y_hat.dim() == 4 && y.sizes() == y_hat.sizes(), "y_hat and y must be (N, C, H, W) of one shape, got ",
              y_hat.sizes(), " and ", y.sizes());
  TORCH_CHECK(y_hat.is_cuda() && y.device() == y_hat.device(), "y_hat and y must be on one CUDA device, got ",
              y_hat.device(), " and ", y.device());
  const int64_t N = y_hat.size(0), C = y_hat.size(1), H = y_hat.size(2), W = y_hat.size(3);
  TORCH_CHECK(scale.numel() == 2 * C && shift.numel() == 2 * C, "scale and shift must have shape (", 2 * C,
              ",), got ", scale.sizes(), " and ", shift.sizes());
  const at::ScalarType in_dtype = at::promote_types(y_hat.scalar_type(), y.scalar_type());
  const cuda::ElemType in_t = cuda::elem_type(in_dtype, "pgn_input", "y_hat and y");
  const cuda::ElemType out_t = cuda::elem_type(out_dtype, "pgn_input", "out_dtype");
  const c10::cuda::CUDAGuard guard(y_hat.device());
  const at::Tensor a = y_hat.to(in_dtype).contiguous();
  const at::Tensor b = y.to(in_dtype).contiguous();
  const at::Tensor sc = scale.to(y_hat.device(), at::kFloat).contiguous();
  const at::Tensor sh = shift.to(y_hat.device(), at::kFloat).contiguous();
  at::Tensor out = at::empty({N, 2 * C, H, W}, y_hat.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
  cuda::launch_pgn_input(in_t, out_t, a.data_ptr(), b.data_ptr(), sc.data_ptr<float>(), sh.data_ptr<float>(),
                         out.data_ptr(), N, C, H * W, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("pgn_input", &perfloss::pgn_input_cuda);
}
