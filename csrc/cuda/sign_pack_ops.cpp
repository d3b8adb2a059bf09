// perfloss::sign_pack / sign_unpack for CUDA tensors: the torch glue of csrc/cuda/sign_pack.cu (checks,
// outputs laid out as the CPU kernels lay them out, the launch).
#include "cuda/glue.h"
#include "cuda/sign_pack.cuh"
#include "lean_common.h"

namespace perfloss {
namespace lean {
namespace {

using cuda::check_cuda;
using cuda::check_same_device;

at::Tensor sign_pack_cuda(const at::Tensor& g_in) {
  check_cuda(g_in, "sign_pack", "g");
  const c10::cuda::CUDAGuard guard(g_in.device());
  const at::Tensor g = dense(g_in);
  at::Tensor codes = at::empty({packed_bytes(g.numel(), 2)}, g.options().dtype(at::kByte));
  launch_sign_pack(cuda::elem_type(g.scalar_type(), "sign_pack", "g"), g.const_data_ptr(),
                   codes.mutable_data_ptr<uint8_t>(), g.numel(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return codes;
}

at::Tensor sign_unpack_cuda(const at::Tensor& codes_in, const at::Tensor& scale, const at::Tensor& grad_values,
                            at::IntArrayRef sizes, bool channels_last) {
  check_cuda(scale, "sign_unpack", "scale");
  check_same_device(codes_in, "sign_unpack", "codes", scale, "scale");
  check_same_device(grad_values, "sign_unpack", "grad_values", scale, "scale");
  TORCH_CHECK(codes_in.scalar_type() == at::kByte, "sign_unpack: codes must be uint8, got ", codes_in.scalar_type());
  TORCH_CHECK(scale.numel() == 1, "sign_unpack: scale must have one element, got ", scale.numel());
  TORCH_CHECK(!sizes.empty(), "sign_unpack: sizes must not be empty");
  TORCH_CHECK(!channels_last || sizes.size() == 4, "sign_unpack: channels_last needs 4 sizes, got ", sizes.size());
  const c10::cuda::CUDAGuard guard(scale.device());
  const at::Tensor codes = codes_in.contiguous();
  at::Tensor out = at::empty(sizes, scale.options().memory_format(memory_format_of(channels_last)));
  const int64_t n = out.numel();
  const int64_t batch = sizes[0];
  TORCH_CHECK(grad_values.numel() == batch, "sign_unpack: grad_values must have one entry per sample (", batch,
              "), got ", grad_values.numel());
  TORCH_CHECK(codes.numel() == packed_bytes(n, 2), "sign_unpack: codes has ", codes.numel(), " bytes, expected ",
              packed_bytes(n, 2), " (2 bits per element)");
  const at::Tensor gv = grad_values.to(scale.scalar_type()).contiguous();
  launch_sign_unpack(cuda::elem_type(scale.scalar_type(), "sign_unpack", "scale"), codes.const_data_ptr<uint8_t>(),
                     scale.const_data_ptr(), gv.const_data_ptr(), out.mutable_data_ptr(), n, batch > 0 ? n / batch : 1,
                     c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perfloss, CUDA, m) {
  m.impl("sign_pack", &sign_pack_cuda);
  m.impl("sign_unpack", &sign_unpack_cuda);
}

}  // namespace lean
}  // namespace perfloss
