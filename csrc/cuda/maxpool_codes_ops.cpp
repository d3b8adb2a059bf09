// perfloss::maxpool_codes / maxpool_unroute for CUDA tensors: the torch glue of csrc/cuda/maxpool_codes.cu
// (checks, outputs laid out as the CPU kernels lay them out, the launch).
#include "cuda/glue.h"
#include "cuda/maxpool_codes.cuh"
#include "lean_common.h"

namespace perfloss {
namespace lean {
namespace {

using cuda::check_cuda;
using cuda::check_same_device;

Dims4 dims_of(const at::Tensor& t) {
  return {t.size(0), t.size(1), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

std::tuple<at::Tensor, at::Tensor> maxpool_codes_cuda(const at::Tensor& x, at::IntArrayRef kernel,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, bool ceil_mode, int64_t keep) {
  check_cuda(x, "maxpool_codes", "x");
  TORCH_CHECK(x.dim() == 4, "maxpool_codes: x must be 4-D (N, C, H, W), got ", x.dim(), " dimensions");
  const PoolGeometry g = pool_geometry(kernel, stride, padding, dilation, "maxpool_codes");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(keep >= 0 && keep <= B, "maxpool_codes: keep must be in [0, ", B, "], got ", keep);
  const int64_t OH = pool_out_size(H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  const int64_t OW = pool_out_size(W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TORCH_CHECK(OH > 0 && OW > 0, "maxpool_codes: the window does not fit x of height ", H, " and width ", W);
  const int64_t bits = pool_code_bits(g.kh * g.kw);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool cl = work_channels_last(x);
  at::Tensor y = at::empty({B, C, OH, OW}, x.options().memory_format(memory_format_of(cl)));
  at::Tensor codes = at::empty({packed_bytes(keep * C * OH * OW, bits)}, x.options().dtype(at::kByte));
  launch_maxpool_codes(cuda::elem_type(x.scalar_type(), "maxpool_codes", "x"), x.const_data_ptr(), dims_of(x),
                       y.mutable_data_ptr(), dims_of(y), cl, codes.mutable_data_ptr<uint8_t>(), keep * C * OH * OW,
                       bits, g, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, codes};
}

at::Tensor maxpool_unroute_cuda(const at::Tensor& grad, const at::Tensor& codes_in, at::IntArrayRef input_hw,
                                at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation) {
  check_cuda(grad, "maxpool_unroute", "grad");
  check_same_device(codes_in, "maxpool_unroute", "codes", grad, "grad");
  TORCH_CHECK(grad.dim() == 4, "maxpool_unroute: grad must be 4-D (N, C, OH, OW), got ", grad.dim(), " dimensions");
  TORCH_CHECK(codes_in.scalar_type() == at::kByte, "maxpool_unroute: codes must be uint8, got ",
              codes_in.scalar_type());
  TORCH_CHECK(input_hw.size() == 2, "maxpool_unroute: input_hw must have 2 entries");
  const PoolGeometry g = pool_geometry(kernel, stride, padding, dilation, "maxpool_unroute");
  const int64_t bits = pool_code_bits(g.kh * g.kw);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor codes = codes_in.contiguous();
  TORCH_CHECK(codes.numel() == packed_bytes(grad.numel(), bits), "maxpool_unroute: codes has ", codes.numel(),
              " bytes, expected ", packed_bytes(grad.numel(), bits), " (", bits, " bits per element of grad)");
  const bool cl = work_channels_last(grad);  // the codes' order, and grad_in's layout
  at::Tensor out = at::empty({grad.size(0), grad.size(1), input_hw[0], input_hw[1]},
                             grad.options().memory_format(memory_format_of(cl)));
  launch_maxpool_unroute(cuda::elem_type(grad.scalar_type(), "maxpool_unroute", "grad"), grad.const_data_ptr(),
                         dims_of(grad), cl, codes.const_data_ptr<uint8_t>(), bits, out.mutable_data_ptr(), input_hw[0],
                         input_hw[1], g, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("maxpool_codes", &maxpool_codes_cuda);
  m.impl("maxpool_unroute", &maxpool_unroute_cuda);
}

}  // namespace lean
}  // namespace perfloss
