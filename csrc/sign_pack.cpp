// perfloss::sign_pack / sign_unpack, CPU kernels: a tensor scale * sign(t) at 2 bits per element
// (0: zero, 1: +, 2: -; 4 per byte, memory order) and its unpacking fused with the per-sample multiply.
// The per-element math is csrc/lean_math.h's, shared with the CUDA kernels (csrc/cuda/sign_pack.cu).
// See perfloss/ops/sign_pack.py for the contract; the reference there is the specification.
#include "lean_common.h"

namespace perfloss {
namespace lean {
namespace {

at::Tensor sign_pack_cpu(const at::Tensor& g_in) {
  TORCH_CHECK(g_in.device().is_cpu() && at::isFloatingType(g_in.scalar_type()), "sign_pack: floating CPU tensor expected");
  const at::Tensor g = dense(g_in);
  const int64_t n = g.numel();
  const int64_t n_bytes = packed_bytes(n, 2);
  at::Tensor codes = at::empty({n_bytes}, g.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "sign_pack_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    uint8_t* dst = codes.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, n_bytes, kGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t byte = b0; byte < b1; ++byte) {
        uint8_t packed = 0;
        const int64_t e0 = byte * 4, e1 = std::min<int64_t>(e0 + 4, n);
        for (int64_t e = e0; e < e1; ++e) {  // branch-free: signs are random, branches mispredict
          packed |= static_cast<uint8_t>(sign_code(static_cast<opmath_t>(src[e])) << ((e - e0) * 2));
        }
        dst[byte] = packed;
      }
    });
  });
  return codes;
}

at::Tensor sign_unpack_cpu(const at::Tensor& codes_in, const at::Tensor& scale, const at::Tensor& grad_values,
                              at::IntArrayRef sizes, bool channels_last) {
  TORCH_CHECK(codes_in.scalar_type() == at::kByte, "sign_unpack: codes must be uint8");
  TORCH_CHECK(scale.numel() == 1, "sign_unpack: scale must have one element");
  TORCH_CHECK(!sizes.empty(), "sign_unpack: sizes must not be empty");
  const at::Tensor codes = codes_in.contiguous();
  at::Tensor out = at::empty(sizes, scale.options().memory_format(
      channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  const int64_t n = out.numel();
  const int64_t batch = sizes[0];
  TORCH_CHECK(grad_values.numel() == batch, "sign_unpack: grad_values must have one entry per sample");
  TORCH_CHECK(codes.numel() == packed_bytes(n, 2), "sign_unpack: codes size mismatch");
  const int64_t per_sample = batch > 0 ? n / batch : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scale.scalar_type(), "sign_unpack_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor gv = grad_values.to(scale.scalar_type()).contiguous();
    const scalar_t* gvp = gv.const_data_ptr<scalar_t>();
    const opmath_t s = static_cast<opmath_t>(scale.item<scalar_t>());
    // sign_value with its inner product, signed_scale, looked up per code (faster than computed)
    const opmath_t signed_scales[4] = {signed_scale(0u, s), signed_scale(1u, s), signed_scale(2u, s),
                                       signed_scale(3u, s)};
    const uint8_t* cp = codes.const_data_ptr<uint8_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // per sample, so the sample index is not divided out per element
    at::parallel_for(0, n, kGrain * 4, [&](int64_t e0, int64_t e1) {
      int64_t e = e0;
      while (e < e1) {
        const int64_t b = e / per_sample;
        const int64_t stop = std::min(e1, (b + 1) * per_sample);
        const opmath_t gvb = static_cast<opmath_t>(gvp[b]);
        for (; e < stop; ++e)
          o[e] = static_cast<scalar_t>(gvb * signed_scales[packed_code_at(cp, e, 2)]);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("sign_pack", &sign_pack_cpu);
  m.impl("sign_unpack", &sign_unpack_cpu);
}

}  // namespace lean
}  // namespace perfloss
