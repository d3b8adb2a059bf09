// The launch shape and element types of every perfloss CUDA kernel: blocks of kThreads threads in 1-D
// grids whose kernels loop grid-stride over int64_t indices, so a capped grid still covers any size;
// launchers take untyped pointers and an ElemType (the glue maps at::ScalarType to it) and pick the
// kernel's C++ element type with dispatch_elem.
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

// The element type behind a launcher's untyped pointers.
enum class ElemType { kFloat, kDouble, kHalf, kBFloat16 };

}  // namespace cuda
}  // namespace perfloss

#ifdef __CUDACC__

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace perfloss {
namespace cuda {

// A grid-stride loop over items, one per thread at a time: for (e = first_item(); e < n; e += item_stride()).
__device__ inline int64_t first_item() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t item_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Calls f(T()) with T the C++ type of `t`: f is a generic lambda that launches its kernels for T.
template <typename F>
void dispatch_elem(ElemType t, F&& f) {
  switch (t) {
    case ElemType::kFloat: f(float()); break;
    case ElemType::kDouble: f(double()); break;
    case ElemType::kHalf: f(__half()); break;
    case ElemType::kBFloat16: f(__nv_bfloat16()); break;
  }
}

}  // namespace cuda
}  // namespace perfloss

#endif
