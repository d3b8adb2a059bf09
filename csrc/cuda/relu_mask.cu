// perfloss::relu_mask / relu_mask_ / relu_mask_backward, CUDA kernels. The mask is packed with a warp
// ballot: 32 consecutive elements, one per lane, give 4 mask bytes. The per-element math is
// csrc/lean_math.h's, the same the CPU kernels run.
#include "cuda/relu_mask.cuh"
#include "cuda/launch.cuh"
#include "lean_math.h"

namespace perfloss {
namespace lean {
namespace {

// One warp per 32 consecutive elements, grid-stride over warps (the loop bound is the same for every
// lane, so all 32 lanes reach the ballot). Bytes past the kept ones are not written; bits past n_keep
// in the last kept byte are 0 (those lanes vote false).
template <typename T, typename A>
__global__ void relu_mask_kernel(const T* x, T* y, uint8_t* mask, int64_t n, int64_t n_keep, A slope, bool plain) {
  const unsigned lane = threadIdx.x & 31u;
  const int64_t mask_bytes = (n_keep + 7) / 8;
  for (int64_t base = cuda::first_item() - lane; base < n; base += cuda::item_stride()) {
    const int64_t e = base + lane;
    bool bit = false;
    if (e < n) {
      const T v = x[e];  // read before the in-place write below, by the same thread
      bit = e < n_keep && relu_mask_bit<A>(v);
      y[e] = relu_activation<A>(v, slope, plain);
    }
    const unsigned votes = __ballot_sync(0xffffffffu, bit);
    const int64_t byte = base / 8 + lane;
    if (lane < 4 && byte < mask_bytes) mask[byte] = static_cast<uint8_t>(votes >> (8 * lane));
  }
}

template <typename T, typename A>
__global__ void relu_mask_backward_kernel(const T* grad, const uint8_t* mask, T* grad_in, int64_t n, A slope,
                                          bool plain) {
  for (int64_t e = cuda::first_item(); e < n; e += cuda::item_stride())
    grad_in[e] = relu_grad(mask_bit_at(mask, e), grad[e], slope, plain);
}

}  // namespace

void launch_relu_mask(cuda::ElemType t, const void* x, void* y, uint8_t* mask, int64_t n, int64_t n_keep,
                      double negative_slope, cudaStream_t stream) {
  if (n == 0) return;
  cuda::dispatch_elem(t, [&](auto element) {
    using T = decltype(element);
    using A = opmath_t<T>;
    relu_mask_kernel<T, A><<<cuda::grid_for_items(n), cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(y), mask, n, n_keep, static_cast<A>(negative_slope),
        negative_slope == 0.0);
  });
}

void launch_relu_mask_backward(cuda::ElemType t, const void* grad, const uint8_t* mask, void* grad_in, int64_t n,
                               double negative_slope, cudaStream_t stream) {
  if (n == 0) return;
  cuda::dispatch_elem(t, [&](auto element) {
    using T = decltype(element);
    using A = opmath_t<T>;
    relu_mask_backward_kernel<T, A><<<cuda::grid_for_items(n), cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(grad), mask, static_cast<T*>(grad_in), n, static_cast<A>(negative_slope),
        negative_slope == 0.0);
  });
}

}  // namespace lean
}  // namespace perfloss
