// The per-element math of the lean engine's bit ops (relu_mask, maxpool_codes, sign_pack), shared by
// the CPU kernels (csrc/*.cpp) and the CUDA kernels (csrc/cuda/*.cu): the CPU tests exercise exactly
// the arithmetic the GPU runs. Plain scalars and pointers only (no torch types): nvcc compiles it
// without torch's headers.
//
// Template parameters: T is the stored element type (float, double, and at::Half / at::BFloat16 on
// the CPU or __half / __nv_bfloat16 under nvcc); A is its arithmetic type (float for the 16-bit types).
#pragma once

#include "element_types.h"

#include <cmath>
#include <cstdint>

namespace perfloss {
namespace lean {

// ---- relu_mask ----------------------------------------------------------------------------------

// The mask bit: x > 0. False for NaN, so the backward takes the slope side there (as LeakyReLU's
// eager backward does).
template <typename A, typename T>
PERFLOSS_HD bool relu_mask_bit(T v) {
  return cast_to<A>(v) > A(0);
}

// ReLU (plain) or LeakyReLU: plain maps v <= 0 to +0 (-0 too) and passes the rest, NaN included,
// unchanged; leaky passes v > 0 and multiplies the rest (NaN stays NaN) by the slope in A.
template <typename A, typename T>
PERFLOSS_HD T relu_activation(T v, A slope, bool plain) {
  const A a = cast_to<A>(v);
  if (plain) return a <= A(0) ? cast_to<T>(A(0)) : v;
  return a > A(0) ? v : cast_to<T>(a * slope);
}

// The backward: grad where the bit is set; elsewhere +0 (plain: never 0 * grad, which is NaN for an
// infinite or NaN grad) or slope * grad.
template <typename A, typename T>
PERFLOSS_HD T relu_grad(bool bit, T g, A slope, bool plain) {
  if (bit) return g;
  return plain ? cast_to<T>(A(0)) : cast_to<T>(cast_to<A>(g) * slope);
}

// Bit e of a 1-bit packed mask.
PERFLOSS_HD bool mask_bit_at(const uint8_t* mask, int64_t e) { return (mask[e >> 3] >> (e & 7)) & 1u; }

// ---- maxpool_codes ------------------------------------------------------------------------------

// Bits per window code: 2 for up to 4 window positions, 4 for up to 16, else 8 (the callers reject
// windows of more than 256 positions).
PERFLOSS_HD int64_t pool_code_bits(int64_t window_positions) {
  return window_positions <= 4 ? 2 : (window_positions <= 16 ? 4 : 8);
}

// Output length along one dimension, as max_pool2d computes it.
PERFLOSS_HD int64_t pool_out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t num = size + 2 * p - (d * (k - 1) + 1);
  int64_t out = (num + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

struct PoolGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Whether window value v replaces the running maximum: greater, or NaN (a later NaN wins too). With
// the scan in row-major window order this is ATen's rule: the first maximum, NaN wins.
template <typename A>
PERFLOSS_HD bool pool_takes(A v, A best) {
  return v > best || v != v;
}

// The window of output (oh, ow) over one H x W input plane with strides (s_h, s_w): its maximum
// (in A, -inf for a window with no position in bounds) and its code, the row-major position
// i * kw + j of the maximum (ATen starts from the first in-bounds position; 0 for an empty window).
template <typename A, typename T>
PERFLOSS_HD unsigned pool_window(const T* plane, int64_t s_h, int64_t s_w, int64_t H, int64_t W,
                                 const PoolGeometry& g, int64_t oh, int64_t ow, A& best) {
  const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  best = -A(INFINITY);
  int64_t code = -1;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = h0 + i * g.dh;
    if (ih < 0 || ih >= H) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t iw = w0 + j * g.dw;
      if (iw < 0 || iw >= W) continue;
      const A v = cast_to<A>(plane[ih * s_h + iw * s_w]);
      if (code < 0) code = i * g.kw + j;
      if (pool_takes(v, best)) {
        best = v;
        code = i * g.kw + j;
      }
    }
  }
  return static_cast<unsigned>(code < 0 ? 0 : code);
}

// Code e of a packing at `bits` bits per code (little end first). Unsigned, so a constant `bits`
// makes the division and remainder shifts.
PERFLOSS_HD unsigned packed_code_at(const uint8_t* packed, int64_t e, int64_t bits) {
  const uint64_t i = static_cast<uint64_t>(e), per = 8 / static_cast<uint64_t>(bits);
  return (packed[i / per] >> ((i % per) * bits)) & ((1u << bits) - 1u);
}

// The input row and column that window code `code` of output (oh, ow) points at.
PERFLOSS_HD void pool_code_to_input(const PoolGeometry& g, int64_t oh, int64_t ow, unsigned code, int64_t& ih,
                                    int64_t& iw) {
  ih = oh * g.sh - g.ph + (static_cast<int64_t>(code) / g.kw) * g.dh;
  iw = ow * g.sw - g.pw + (static_cast<int64_t>(code) % g.kw) * g.dw;
}

// ---- sign_pack ----------------------------------------------------------------------------------

// 0: zero (and NaN, which 2 bits cannot hold), 1: positive, 2: negative.
template <typename A>
PERFLOSS_HD unsigned sign_code(A v) {
  return static_cast<unsigned>(v > A(0)) | (static_cast<unsigned>(v < A(0)) << 1);
}

// g = sign * scale for a sign code, as eager stores it in scale's dtype (exact in A: +-scale, or
// 0 * scale, so an infinite scale gives NaN where the sign is 0, as eager does). Branch-free: the
// codes are random.
template <typename A>
PERFLOSS_HD A signed_scale(unsigned code, A scale) {
  return static_cast<A>(static_cast<int>(code == 1u) - static_cast<int>(code == 2u)) * scale;
}

// One element of sign_unpack: eager's grad_values[b] * g[b], the product in A.
template <typename A>
PERFLOSS_HD A sign_value(unsigned code, A grad_value, A scale) {
  return grad_value * signed_scale(code, scale);
}

}  // namespace lean
}  // namespace perfloss
