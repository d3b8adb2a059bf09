// perfloss::relu_mask / relu_mask_ / relu_mask_backward, CPU kernels: ReLU / LeakyReLU fused with a 1-bit packed
// sign mask (8 elements per byte, memory order) and the mask-unpack fused with the backward multiply.
// The per-element math is csrc/lean_math.h's, shared with the CUDA kernels (csrc/cuda/relu_mask.cu); the AVX2
// fp32 paths compute the same in vector form.
// See perfloss/ops/relu_mask.py for the contract; the reference there is the specification.
#include "lean_common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace perfloss {
namespace lean {
namespace {

#ifdef PERFLOSS_X86_SIMD
// fp32 forward over elements [e, e_end) (e a multiple of 8), one pass: the activation (exactly the
// portable loop's: v <= 0 -> +0, NaN stays, leaky: v > 0 ? v : v * slope) and, for the bytes holding
// kept elements (the first n_keep), the mask byte from a compare + movemask. Safe in place (dst ==
// src). Returns where it stopped.
__attribute__((target("avx2"))) int64_t relu_mask_f32_avx2(const float* src, float* dst, uint8_t* m, int64_t e,
                                                           int64_t e_end, int64_t n_keep, float slope, bool plain) {
  const int64_t full_kb = n_keep / 8;  // bytes whose 8 elements are all kept
  const uint8_t tail_bits = static_cast<uint8_t>((1u << (n_keep % 8)) - 1u);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 vslope = _mm256_set1_ps(slope);
  for (; e + 32 <= e_end; e += 32) {
    uint32_t bits = 0;
    for (int k = 0; k < 4; ++k) {
      const __m256 v = _mm256_loadu_ps(src + e + 8 * k);
      const __m256 gt = _mm256_cmp_ps(v, zero, _CMP_GT_OQ);
      __m256 y;
      if (plain) {
        y = _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LE_OQ), v);
      } else {
        y = _mm256_blendv_ps(_mm256_mul_ps(v, vslope), v, gt);
      }
      _mm256_storeu_ps(dst + e + 8 * k, y);
      bits |= static_cast<uint32_t>(_mm256_movemask_ps(gt)) << (8 * k);
    }
    const int64_t byte = e >> 3;
    if (byte + 4 <= full_kb) {
      std::memcpy(m + byte, &bits, 4);
    } else {
      for (int k = 0; k < 4; ++k) {
        if (byte + k < full_kb) m[byte + k] = static_cast<uint8_t>(bits >> (8 * k));
        else if (byte + k == full_kb && tail_bits) m[byte + k] = static_cast<uint8_t>(bits >> (8 * k)) & tail_bits;
      }
    }
  }
  return e;
}

// fp32 backward over bytes [b0, b1) of full 8-element groups: the mask byte broadcast and compared
// against the lane bits selects grad (or +0 / grad * slope), exactly as the portable loop.
__attribute__((target("avx2"))) void relu_mask_backward_f32_avx2(const float* g, const uint8_t* m, float* o,
                                                                 int64_t b0, int64_t b1, float slope, bool plain) {
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 vslope = _mm256_set1_ps(slope);
  for (int64_t byte = b0; byte < b1; ++byte) {
    const __m256i bc = _mm256_set1_epi32(m[byte]);
    const __m256 sel = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(bc, lane_bits), lane_bits));
    const __m256 v = _mm256_loadu_ps(g + byte * 8);
    const __m256 out = plain ? _mm256_and_ps(v, sel) : _mm256_blendv_ps(_mm256_mul_ps(v, vslope), v, sel);
    _mm256_storeu_ps(o + byte * 8, out);
  }
}
#endif

// y = activation(x) (y may be x itself: every element is read before it is written, by the same
// thread), mask = packed x > 0 of the first n_keep elements.
void relu_mask_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& mask, double negative_slope,
                    int64_t n_keep) {
  const int64_t n = x.numel();
  const int64_t n_bytes = (n + 7) / 8;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "relu_mask_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    uint8_t* m = mask.mutable_data_ptr<uint8_t>();
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    const bool plain = negative_slope == 0.0;
    const int64_t all_kb = (n_keep + 7) / 8;
    at::parallel_for(0, n_bytes, kGrain, [&](int64_t b0, int64_t b1) {
      int64_t e_begin = b0 * 8;
      const int64_t e_end = std::min<int64_t>(b1 * 8, n);
      int64_t mask_begin = b0;
#ifdef PERFLOSS_X86_SIMD
      // fp32 with AVX2: activation and mask in one pass; the portable loops finish the tails
      if (std::is_same_v<scalar_t, float>) {  // (not a template: both branches compile, casts never run otherwise)
        if (use_avx2()) {
          const int64_t stop = relu_mask_f32_avx2(reinterpret_cast<const float*>(src), reinterpret_cast<float*>(dst), m,
                                                  e_begin, e_end, n_keep, static_cast<float>(slope), plain);
          mask_begin = std::max(b0, std::min(stop >> 3, all_kb));
          e_begin = stop;
        }
      }
#endif
      // 1) the mask of the kept samples: 8 compares per byte (before the activation overwrites x in place)
      const int64_t kb_end = std::min<int64_t>(b1, all_kb);
      for (int64_t byte = mask_begin; byte < kb_end; ++byte) {
        const int64_t e0 = byte * 8;
        uint8_t bits = 0;
        if (e0 + 8 <= n_keep) {
          const scalar_t* p = src + e0;
          for (int j = 0; j < 8; ++j) bits |= static_cast<uint8_t>(relu_mask_bit<opmath_t>(p[j])) << j;
        } else {
          for (int64_t e = e0; e < n_keep; ++e)
            bits |= static_cast<uint8_t>(relu_mask_bit<opmath_t>(src[e])) << (e - e0);
        }
        m[byte] = bits;
      }
      // 2) the activation: a branch-free loop the compiler unswitches on `plain` and vectorises
      for (int64_t e = e_begin; e < e_end; ++e) dst[e] = relu_activation<opmath_t>(src[e], slope, plain);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> relu_mask_cpu(const at::Tensor& x_in, double negative_slope, int64_t keep) {
  TORCH_CHECK(x_in.device().is_cpu(), "relu_mask: x must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "relu_mask: x must be floating point");
  const at::Tensor x = dense(x_in);
  const int64_t n_keep = kept_elements(x, keep, "relu_mask");
  at::Tensor y = at::empty_like(x);
  at::Tensor mask = at::empty({packed_bytes(n_keep, 1)}, x.options().dtype(at::kByte));
  relu_mask_impl(x, y, mask, negative_slope, n_keep);
  return {y, mask};
}

// In place: x becomes activation(x) (x must be contiguous or channels_last); returns the mask.
at::Tensor relu_mask_inplace_cpu(at::Tensor& x, double negative_slope, int64_t keep) {
  TORCH_CHECK(x.device().is_cpu(), "relu_mask_: x must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "relu_mask_: x must be floating point");
  TORCH_CHECK(x.is_contiguous() || work_channels_last(x), "relu_mask_: x must be dense");
  const int64_t n_keep = kept_elements(x, keep, "relu_mask_");
  at::Tensor mask = at::empty({packed_bytes(n_keep, 1)}, x.options().dtype(at::kByte));
  relu_mask_impl(x, x, mask, negative_slope, n_keep);
  return mask;
}

// 256 x 8 select masks: lane j of row `byte` is all ones when bit j of `byte` is set. Selecting with a
// bitwise AND gives relu_grad's values (grad, or +0 / the slope product) and lets the compiler
// vectorise the 8 lanes of every dtype; relu_grad itself does the tail byte (and the CUDA kernel).
template <typename U>
struct SelectLut {
  U m[256][8];
  SelectLut() {
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) m[b][j] = ((b >> j) & 1) ? static_cast<U>(~U(0)) : U(0);
  }
};

template <typename scalar_t, typename U>
void relu_mask_backward_impl(const scalar_t* g, const uint8_t* m, scalar_t* o, int64_t n, double negative_slope) {
  static_assert(sizeof(scalar_t) == sizeof(U), "lane type must match the scalar size");
  using opmath_t = at::opmath_type<scalar_t>;
  static const SelectLut<U> lut;
  const opmath_t slope = static_cast<opmath_t>(negative_slope);
  const bool plain = negative_slope == 0.0;
  const int64_t full = n / 8;
  at::parallel_for(0, (n + 7) / 8, kGrain, [&](int64_t b0, int64_t b1) {
    const int64_t fb1 = std::min(b1, full);
    int64_t fb0 = b0;
#ifdef PERFLOSS_X86_SIMD
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (use_avx2() && fb0 < fb1) {
        relu_mask_backward_f32_avx2(g, m, o, fb0, fb1, slope, plain);
        fb0 = fb1;
      }
    }
#endif
    for (int64_t byte = fb0; byte < fb1; ++byte) {
      const U* sel = lut.m[m[byte]];
      U gu[8], ou[8];
      std::memcpy(gu, g + byte * 8, sizeof(gu));
      if (plain) {
        for (int j = 0; j < 8; ++j) ou[j] = gu[j] & sel[j];
      } else {
        U su[8];
        scalar_t sv[8];
        for (int j = 0; j < 8; ++j) sv[j] = relu_grad(false, g[byte * 8 + j], slope, false);
        std::memcpy(su, sv, sizeof(su));
        for (int j = 0; j < 8; ++j) ou[j] = (gu[j] & sel[j]) | (su[j] & static_cast<U>(~sel[j]));
      }
      std::memcpy(o + byte * 8, ou, sizeof(ou));
    }
    for (int64_t e = std::max(b0, full) * 8; e < std::min(b1 * 8, n); ++e)  // the tail byte
      o[e] = relu_grad(mask_bit_at(m, e), g[e], slope, plain);
  });
}

at::Tensor relu_mask_backward_cpu(const at::Tensor& grad_in, const at::Tensor& mask, double negative_slope) {
  TORCH_CHECK(grad_in.device().is_cpu() && mask.device().is_cpu(), "relu_mask_backward: CPU tensors expected");
  TORCH_CHECK(mask.scalar_type() == at::kByte, "relu_mask_backward: mask must be uint8");
  const at::Tensor grad = dense(grad_in);
  const at::Tensor m_t = mask.contiguous();
  const int64_t n = grad.numel();
  TORCH_CHECK(m_t.numel() == packed_bytes(n, 1), "relu_mask_backward: mask has ", m_t.numel(),
              " bytes, expected ", packed_bytes(n, 1));
  at::Tensor out = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "relu_mask_backward_cpu", [&] {
    using lane_t = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                      std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
    relu_mask_backward_impl<scalar_t, lane_t>(grad.const_data_ptr<scalar_t>(), m_t.const_data_ptr<uint8_t>(),
                                              out.mutable_data_ptr<scalar_t>(), n, negative_slope);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("relu_mask", &relu_mask_cpu);
  m.impl("relu_mask_", &relu_mask_inplace_cpu);
  m.impl("relu_mask_backward", &relu_mask_backward_cpu);
}

}  // namespace lean
}  // namespace perfloss
