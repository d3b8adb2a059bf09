// The launch shape of every perfloss CUDA kernel: blocks of kThreads threads in 1-D grids whose kernels
// loop grid-stride over int64_t indices, so a capped grid still covers any size.
#pragma once

#include <cstdint>

namespace perfloss {
namespace cuda {

constexpr int kThreads = 256;  // 8 warps
// More blocks than this keep no GPU busier (every SM of the largest holds a few dozen at most); the
// grid-stride loops do the rest.
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

inline unsigned int grid_for(int64_t blocks) {
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Blocks for `items` work items, one per thread.
inline unsigned int grid_for_items(int64_t items) { return grid_for((items + kThreads - 1) / kThreads); }

}  // namespace cuda
}  // namespace perfloss
