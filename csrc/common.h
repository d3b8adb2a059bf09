// What every CPU kernel agrees on with kernels/common.py: the working layout, packed sizes, the
// accumulation dtype.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

namespace perfloss {

// The dense layout a kernel works in: channels_last (NHWC) when the tensor is stored that way (and
// is not also plain contiguous) or is closest to it (channels innermost), else NCHW-contiguous.
// Bit-packed masks and codes are stored in this memory order.
inline bool work_channels_last(const at::Tensor& x) {
  if (x.dim() != 4 || x.is_contiguous()) return false;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return true;
  return x.stride(1) == 1 && x.size(1) > 1;
}

inline at::MemoryFormat memory_format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// x in its working layout (x itself when it already is).
inline at::Tensor dense(const at::Tensor& x) { return x.contiguous(memory_format_of(work_channels_last(x))); }

// Bytes holding `numel` codes of `bits` bits, 8 / bits to a byte.
inline int64_t packed_bytes(int64_t numel, int64_t bits) {
  const int64_t per = 8 / bits;
  return (numel + per - 1) / per;
}

// The dtype losses accumulate and return values in: float32, float64 for float64 inputs.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace perfloss
