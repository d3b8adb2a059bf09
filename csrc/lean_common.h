// Helpers shared by the lean engine's CPU kernels (relu_mask, maxpool_codes, sign_pack).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

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

}  // namespace lean
}  // namespace perfloss
