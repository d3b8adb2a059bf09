// Element types and their conversions, for the per-element math the CPU and CUDA kernels share and for
// the CUDA kernels themselves. Plain scalars only: nvcc compiles it without torch's headers.
#pragma once

#include "host_device.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace perfloss {

// Element conversion. torch compiles CUDA code with __CUDA_NO_HALF_CONVERSIONS__ (and the bfloat16
// one), so the 16-bit CUDA types convert through their intrinsics (round to nearest even, as c10's).
template <typename To, typename From>
PERFLOSS_HD To cast_to(From v) {
  return static_cast<To>(v);
}
#ifdef __CUDACC__
template <>
PERFLOSS_HD float cast_to<float, __half>(__half v) {
  return __half2float(v);
}
template <>
PERFLOSS_HD __half cast_to<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
PERFLOSS_HD float cast_to<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
PERFLOSS_HD __nv_bfloat16 cast_to<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}
#endif

// The arithmetic type of element type T: T itself, float for the 16-bit CUDA types (the CPU kernels
// use at::opmath_type, which says the same for at::Half / at::BFloat16).
template <typename T>
struct OpMath {
  using type = T;
};
#ifdef __CUDACC__
template <>
struct OpMath<__half> {
  using type = float;
};
template <>
struct OpMath<__nv_bfloat16> {
  using type = float;
};
#endif
template <typename T>
using opmath_t = typename OpMath<T>::type;

// A stored element in its arithmetic type, and an arithmetic value stored as T (rounded once).
template <typename T>
PERFLOSS_HD opmath_t<T> to_acc(T v) {
  return cast_to<opmath_t<T>>(v);
}
template <typename T, typename V>
PERFLOSS_HD void store(T* p, V v) {
  *p = cast_to<T>(static_cast<opmath_t<T>>(v));
}

}  // namespace perfloss
