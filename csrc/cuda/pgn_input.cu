// perfloss::pgn_input — the CUDA kernel of a PGN's input stage (see pgn_input.cuh): one pass, each
// thread writes consecutive channels_last outputs (coalesced stores; the gathered loads are few
// channels of small images). Grid-stride, 64-bit indices; the math is pgn_math.h's.
#include "cuda/pgn_input.cuh"
#include "pgn_math.h"

namespace perfloss {
namespace cuda {
namespace {


template <typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    pgn_input_kernel(const in_t* __restrict__ y_hat, const in_t* __restrict__ y, const float* __restrict__ scale,
                     const float* __restrict__ shift, out_t* __restrict__ out, int64_t total, int64_t C, int64_t HW) {
  for (int64_t e = first_item(); e < total; e += item_stride()) {
    const int64_t c = e % (2 * C), pixel = e / (2 * C);  // pixel = n * HW + spatial position
    const int64_t src = (pixel / HW) * C * HW + (c % C) * HW + pixel % HW;
    const float v = static_cast<float>(c < C ? to_acc(y_hat[src]) : to_acc(y[src]));
    store(out + e, pgn_math::input_value(v, scale[c], shift[c]));
  }
}

}  // namespace

void launch_pgn_input(ElemType in_t, ElemType out_t, const void* y_hat, const void* y, const float* scale,
                      const float* shift, void* out, int64_t N, int64_t C, int64_t HW, cudaStream_t stream) {
  const int64_t total = N * 2 * C * HW;
  if (total == 0) return;
  dispatch_elem(in_t, [&](auto in_tag) {
    dispatch_elem(out_t, [&](auto out_tag) {
      using I = decltype(in_tag);
      using O = decltype(out_tag);
      pgn_input_kernel<I, O><<<grid_for_items(total), kThreads, 0, stream>>>(
          static_cast<const I*>(y_hat), static_cast<const I*>(y), scale, shift, static_cast<O*>(out), total, C, HW);
    });
  });
}

}  // namespace cuda
}  // namespace perfloss
