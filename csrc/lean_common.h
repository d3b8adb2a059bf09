// Helpers shared by the lean engine's CPU kernels (relu_mask, maxpool_codes, sign_pack).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>

// The hand-vectorised paths are x86 AVX2 code for GCC / Clang.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PERFLOSS_X86_SIMD 1
#include <immintrin.h>
#endif

namespace perfloss {
namespace lean {

// Memory order used for packing: channels_last (NHWC) when the tensor is stored that way and is not
// also plain contiguous, else NCHW (a contiguous copy if needed). Mirrors perfloss/ops/bitpack.py.
inline bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor dense(const at::Tensor& x) {
  return is_channels_last(x) ? x : x.contiguous();
}

inline int64_t packed_bytes(int64_t numel, int64_t bits) {
  const int64_t per = 8 / bits;
  return (numel + per - 1) / per;
}

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

}  // namespace lean
}  // namespace perfloss
