// perfloss::sign_pack / sign_unpack, CUDA kernels; the sign codes and the unpacked product are
// csrc/lean_math.h's, the same the CPU kernels run.
#include "cuda/launch.cuh"
#include "cuda/sign_pack.cuh"
#include "lean_math.h"

namespace perfloss {
namespace lean {
namespace {

// One thread per code byte (4 elements), so no two threads write one byte.
template <typename T, typename A>
__global__ void sign_pack_kernel(const T* g, uint8_t* codes, int64_t n) {
  const int64_t n_bytes = (n + 3) / 4;
  for (int64_t q = cuda::first_item(); q < n_bytes; q += cuda::item_stride()) {
    unsigned packed = 0;
    for (int64_t e = 4 * q; e < 4 * q + 4 && e < n; ++e) packed |= sign_code(cast_to<A>(g[e])) << ((e - 4 * q) * 2);
    codes[q] = static_cast<uint8_t>(packed);
  }
}

template <typename T, typename A>
__global__ void sign_unpack_kernel(const uint8_t* codes, const T* scale, const T* grad_values, T* out, int64_t n,
                                   int64_t per_sample) {
  const A s = cast_to<A>(*scale);
  for (int64_t e = cuda::first_item(); e < n; e += cuda::item_stride())
    out[e] = cast_to<T>(sign_value(packed_code_at(codes, e, 2), cast_to<A>(grad_values[e / per_sample]), s));
}

}  // namespace

void launch_sign_pack(cuda::ElemType t, const void* g, uint8_t* codes, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  cuda::dispatch_elem(t, [&](auto element) {
    using T = decltype(element);
    sign_pack_kernel<T, opmath_t<T>><<<cuda::grid_for_items((n + 3) / 4), cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(g), codes, n);
  });
}

void launch_sign_unpack(cuda::ElemType t, const uint8_t* codes, const void* scale, const void* grad_values, void* out,
                        int64_t n, int64_t per_sample, cudaStream_t stream) {
  if (n == 0) return;
  cuda::dispatch_elem(t, [&](auto element) {
    using T = decltype(element);
    sign_unpack_kernel<T, opmath_t<T>><<<cuda::grid_for_items(n), cuda::kThreads, 0, stream>>>(
        codes, static_cast<const T*>(scale), static_cast<const T*>(grad_values), static_cast<T*>(out), n, per_sample);
  });
}

}  // namespace lean
}  // namespace perfloss
