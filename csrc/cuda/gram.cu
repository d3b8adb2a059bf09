// perfloss::gram — the CUDA epilogue of the Gram matrices (see gram.cuh): elementwise over B*C*C,
// grid-stride with 64-bit indices.
#include "cuda/gram.cuh"

namespace perfloss {
namespace cuda {
namespace {


template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gram_epilogue_kernel(const opmath_t<scalar_t>* __restrict__ gram, scalar_t* __restrict__ out, int64_t B, int64_t C,
                         opmath_t<scalar_t> scale) {
  const int64_t CC = C * C;
  for (int64_t e = first_item(); e < B * CC; e += item_stride()) {
    const int64_t b = e / CC, i = (e % CC) / C, j = e % C;
    const int64_t lo = i < j ? i : j, hi = i < j ? j : i;
    store(out + e, gram[b * CC + lo * C + hi] * scale);
  }
}

}  // namespace

void launch_gram_epilogue(ElemType t, const void* gram, void* out, int64_t B, int64_t C, double scale,
                          cudaStream_t stream) {
  const int64_t total = B * C * C;
  if (total == 0) return;
  dispatch_elem(t, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = opmath_t<scalar_t>;
    gram_epilogue_kernel<scalar_t><<<grid_for_items(total), kThreads, 0, stream>>>(
        static_cast<const acc_t*>(gram), static_cast<scalar_t*>(out), B, C, static_cast<acc_t>(scale));
  });
}

}  // namespace cuda
}  // namespace perfloss
