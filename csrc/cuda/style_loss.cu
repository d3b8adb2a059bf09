// perfloss::style_loss — the CUDA epilogue between the two GEMMs (see style_loss.cuh): one pass over
// the Gram entries gives D = G / (C H W) - T, the per-block partial sums of D^2 (added per sample in a
// fixed order by loss_common.cuh: no atomics) and S = (D + D^T) s_scale. The per-entry math is
// loss_math.h's, which the CPU kernel runs too. The transposed reads (G_ji, T_ji) hit L2: a sample's
// Gram is small next to its features.
#include "cuda/style_loss.cuh"
#include "loss_math.h"

namespace perfloss {
namespace cuda {
namespace {

using namespace loss_math;

constexpr int kItems = 4;
constexpr int64_t kChunk = int64_t(kThreads) * kItems;

inline int64_t chunks_per_sample(int64_t C) { return (C * C + kChunk - 1) / kChunk; }

template <typename scalar_t, bool GRAD>
__global__ void __launch_bounds__(kThreads)
    style_epilogue_kernel(const opmath_t<scalar_t>* __restrict__ gram, const opmath_t<scalar_t>* __restrict__ target,
                          int64_t t_sb, int64_t t_si, int64_t t_sj, scalar_t* __restrict__ s,
                          opmath_t<scalar_t>* __restrict__ partials, int64_t B, int64_t C, int64_t chunks,
                          opmath_t<scalar_t> inv_n, opmath_t<scalar_t> s_scale) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t CC = C * C;
  for (int64_t task = blockIdx.x; task < B * chunks; task += gridDim.x) {
    const int64_t b = task / chunks;
    const acc_t* gb = gram + b * CC;
    const acc_t* tb = target + b * t_sb;
    acc_t sum = 0;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t e = (task % chunks) * kChunk + int64_t(k) * kThreads + threadIdx.x;
      if (e < CC) {
        const int64_t i = e / C, j = e % C;
        const acc_t d = style_difference(gb[e], inv_n, tb[i * t_si + j * t_sj]);
        sum += d * d;
        if (GRAD) {
          const acc_t dt = style_difference(gb[j * C + i], inv_n, tb[j * t_si + i * t_sj]);
          store(s + b * CC + e, style_grad_factor(d, dt, s_scale));
        }
      }
    }
    sum = block_sum<kThreads>(sum);
    if (threadIdx.x == 0) partials[task] = sum;
  }
}

}  // namespace

int64_t style_epilogue_partials(int64_t B, int64_t C) { return B * chunks_per_sample(C); }

void launch_style_epilogue(ElemType t, const void* gram, const void* target, int64_t t_sb, int64_t t_si, int64_t t_sj,
                           void* s, void* partials, void* values, int64_t B, int64_t C, double inv_n, double s_scale,
                           cudaStream_t stream) {
  if (B * C == 0) return;
  const int64_t chunks = chunks_per_sample(C);
  dispatch_elem(t, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = opmath_t<scalar_t>;
    const auto* g = static_cast<const acc_t*>(gram);
    const auto* tg = static_cast<const acc_t*>(target);
    auto* part = static_cast<acc_t*>(partials);
    const acc_t in = static_cast<acc_t>(inv_n), ss = static_cast<acc_t>(s_scale);
    if (s != nullptr) {
      style_epilogue_kernel<scalar_t, true><<<grid_for(B * chunks), kThreads, 0, stream>>>(
          g, tg, t_sb, t_si, t_sj, static_cast<scalar_t*>(s), part, B, C, chunks, in, ss);
    } else {
      style_epilogue_kernel<scalar_t, false><<<grid_for(B * chunks), kThreads, 0, stream>>>(
          g, tg, t_sb, t_si, t_sj, nullptr, part, B, C, chunks, in, ss);
    }
    launch_reduce_partials(part, B, chunks, 1.0, static_cast<acc_t*>(values), stream);
  });
}

}  // namespace cuda
}  // namespace perfloss
