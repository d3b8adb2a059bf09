// Helpers shared by the lean engine's CPU kernels (relu_mask, maxpool_codes, sign_pack); their
// per-element math, shared with the CUDA kernels, is in lean_math.h.
#pragma once

#include "common.h"
#include "lean_math.h"

#include <cstdlib>

// The hand-vectorised paths are x86 AVX2 code for GCC / Clang.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PERFLOSS_X86_SIMD 1
#include <immintrin.h>
#endif

namespace perfloss {
namespace lean {

constexpr int64_t kGrain = 1 << 12;  // bytes of packed output per parallel chunk, at least

// Runtime dispatch for the hand-vectorised paths: the extension is built without -march flags, so
// AVX2 code lives in functions compiled with __attribute__((target("avx2"))) and runs only when the
// CPU has it (PERFLOSS_NO_SIMD=1 forces the portable loops, for testing and measuring).
inline bool use_avx2() {
#ifdef PERFLOSS_X86_SIMD
  static const bool ok = __builtin_cpu_supports("avx2") && !std::getenv("PERFLOSS_NO_SIMD");
  return ok;
#else
  return false;
#endif
}

// Elements of the first `keep` samples of x, whose mask bits relu_mask keeps.
inline int64_t kept_elements(const at::Tensor& x, int64_t keep, const char* op) {
  const int64_t batch = x.dim() > 0 ? x.size(0) : 1;
  TORCH_CHECK(keep >= 0 && keep <= batch, op, ": keep must be in [0, ", batch, "], got ", keep);
  return batch > 0 ? keep * (x.numel() / batch) : 0;
}

// A max-pool window from the op's kernel, stride, padding and dilation arguments.
inline PoolGeometry pool_geometry(at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d,
                                  const char* op) {
  TORCH_CHECK(k.size() == 2 && s.size() == 2 && p.size() == 2 && d.size() == 2, op,
              ": kernel, stride, padding, dilation must have 2 entries each");
  TORCH_CHECK(k[0] > 0 && k[1] > 0 && s[0] > 0 && s[1] > 0 && d[0] > 0 && d[1] > 0 && p[0] >= 0 && p[1] >= 0, op,
              ": kernel, stride and dilation must be positive and padding non-negative");
  TORCH_CHECK(k[0] * k[1] <= 256, op, ": windows of more than 256 positions are not supported");
  return {k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]};
}

}  // namespace lean
}  // namespace perfloss
