// Helpers shared by the lean engine's CPU kernels (relu_mask, maxpool_codes, sign_pack).
#pragma once

#include "common.h"

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

}  // namespace lean
}  // namespace perfloss
