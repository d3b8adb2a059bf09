// perfloss::pgn_output — the CUDA kernel of a PGN's fused sigmoid output (see pgn_output.cuh): one
// pass, one flat index for the four tensors (they share a layout). Grid-stride, 64-bit indices; the
// math is pgn_math.h's.
#include "cuda/pgn_output.cuh"
#include "pgn_math.h"

namespace perfloss {
namespace cuda {
namespace {


template <typename out_t, typename y_t>
__global__ void __launch_bounds__(kThreads)
    pgn_output_kernel(const out_t* __restrict__ out, const y_t* __restrict__ y_hat, const float* __restrict__ offset,
                      y_t* __restrict__ proxy, y_t* __restrict__ grad, int64_t total, int64_t C, int64_t HW,
                      bool channels_last, float gain, float coef) {
  for (int64_t e = first_item(); e < total; e += item_stride()) {
    const int64_t c = channels_last ? e % C : (e / HW) % C;
    const float p = pgn_math::sigmoid_proxy(static_cast<float>(to_acc(out[e])), gain, offset[c]);
    store(proxy + e, p);
    store(grad + e, pgn_math::proxy_grad(static_cast<float>(to_acc(y_hat[e])), p, coef));
  }
}

}  // namespace

void launch_pgn_output(ElemType out_t, ElemType y_t, bool channels_last, const void* out, const void* y_hat,
                       const float* offset, void* proxy, void* grad, int64_t N, int64_t C, int64_t HW, float gain,
                       float coef, cudaStream_t stream) {
  const int64_t total = N * C * HW;
  if (total == 0) return;
  dispatch_elem(out_t, [&](auto out_tag) {
    dispatch_elem(y_t, [&](auto y_tag) {
      using O = decltype(out_tag);
      using Y = decltype(y_tag);
      pgn_output_kernel<O, Y><<<grid_for_items(total), kThreads, 0, stream>>>(
          static_cast<const O*>(out), static_cast<const Y*>(y_hat), offset, static_cast<Y*>(proxy),
          static_cast<Y*>(grad), total, C, HW, channels_last, gain, coef);
    });
  });
}

}  // namespace cuda
}  // namespace perfloss
