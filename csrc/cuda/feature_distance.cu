// perfloss::feature_distance — CUDA kernels: per-sample values and d/d f0 in one pass over f0 and f1.
//
// - mse / l1: every block owns kChunk consecutive elements of one sample (NCHW and NHWC order a
//   sample's C*H*W elements alike: f0, f1 and the gradient share one layout);
// - cosine / lpips: a group of G lanes owns one pixel. G = 1 where pixels are what lies next to each
//   other in memory (NCHW; NHWC with fewer than 32 channels, where a warp's 32 pixels still span one
//   contiguous run); otherwise (NHWC, C >= 32) a warp per pixel walks its contiguous channel vector.
//   A lane re-reads its own channels for the value and gradient passes. Those re-reads come from L2:
//   the grid is capped so that the tiles of the blocks in flight fit in half of it (the blocks loop
//   over the tasks), so DRAM sees each input once.
// Each block writes one partial sum per task; loss_common.cuh adds them per sample in a fixed order:
// no atomics, the values are the same run to run. The per-element math is loss_math.h's (which the
// CPU kernel runs too); fp32 accumulation, double for double; 64-bit index math.
#include "cuda/feature_distance.cuh"
#include "loss_math.h"

#include <algorithm>

namespace perfloss {
namespace cuda {
namespace {

using namespace loss_math;

constexpr int kItems = 8;  // elements per thread of an mse / l1 block: several loads in flight
constexpr int64_t kChunk = int64_t(kThreads) * kItems;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Lanes per pixel of the cosine / lpips kernel.
inline int group_width(bool channels_last, int64_t C) { return channels_last && C >= kWarp ? kWarp : 1; }

// Blocks of the cosine / lpips kernel: one per task, but no more than fill every SM while their tiles
// (tile_bytes each, read once from DRAM and re-read from L2) fit in half of the L2.
unsigned int l2_resident_grid(int64_t tasks, int64_t tile_bytes) {
  int device = 0, sms = 0, l2_bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device) != cudaSuccess) {
    return grid_for(tasks);  // the launch reports the device's error
  }
  return grid_for(std::min(tasks, std::max<int64_t>(sms, l2_bytes / 2 / tile_bytes)));
}

template <typename scalar_t, int KIND, bool GRAD>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ g,
                       opmath_t<scalar_t>* __restrict__ partials, int64_t B, int64_t L, int64_t chunks,
                       opmath_t<scalar_t> gscale) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t task = blockIdx.x; task < B * chunks; task += gridDim.x) {
    const int64_t s = task / chunks, c = task % chunks;
    const int64_t begin = s * L + c * kChunk;
    const int64_t n = L - c * kChunk < kChunk ? L - c * kChunk : kChunk;
    acc_t sum = 0;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t i = int64_t(k) * kThreads + threadIdx.x;
      if (i < n) {
        const acc_t d = to_acc(a[begin + i]) - to_acc(b[begin + i]);
        sum += elementwise_term<KIND>(d);
        if (GRAD) store(g + begin + i, elementwise_grad<KIND>(d, gscale));
      }
    }
    sum = block_sum<kThreads>(sum);
    if (threadIdx.x == 0) partials[task] = sum;
  }
}

// One task: kThreads / G pixels of one sample. Element c of pixel p of sample s sits at
// s*C*P + p*stride_p + c*stride_c (NCHW: stride_c = P, stride_p = 1; NHWC: stride_c = 1, stride_p = C).
template <typename scalar_t, int KIND, bool GRAD, int G>
__global__ void __launch_bounds__(kThreads)
    normalized_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ g,
                      const opmath_t<scalar_t>* __restrict__ w, opmath_t<scalar_t>* __restrict__ partials, int64_t B,
                      int64_t C, int64_t P, int64_t stride_c, int64_t stride_p, int64_t tasks_per_sample,
                      opmath_t<scalar_t> inv_p) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int kPixels = kThreads / G;
  const int lane = threadIdx.x % G;
  for (int64_t task = blockIdx.x; task < B * tasks_per_sample; task += gridDim.x) {
    const int64_t s = task / tasks_per_sample;
    const int64_t p = (task % tasks_per_sample) * kPixels + threadIdx.x / G;
    // Lanes past the last pixel still take part in the group sums (which need the whole warp).
    const bool valid = p < P;
    const int64_t base = s * C * P + (valid ? p : 0) * stride_p;
    acc_t s00 = 0, s11 = 0, s01 = 0;
    if (valid) {
#pragma unroll 4
      for (int64_t c = lane; c < C; c += G) {
        const acc_t x = to_acc(a[base + c * stride_c]), y = to_acc(b[base + c * stride_c]);
        s00 += x * x;
        s11 += y * y;
        s01 += x * y;
      }
    }
    s00 = group_sum<G>(s00);
    s11 = group_sum<G>(s11);
    s01 = group_sum<G>(s01);
    const acc_t r0 = inverse_norm(s00), r1 = inverse_norm(s11);
    acc_t pixel_value;
    if constexpr (KIND == kCosine) {
      const acc_t cs = cosine_similarity(s01, r0, r1);
      pixel_value = acc_t(1) - cs;
      if (GRAD && valid) {
        for (int64_t c = lane; c < C; c += G) {
          const int64_t off = base + c * stride_c;
          store(g + off, cosine_grad(to_acc(a[off]), to_acc(b[off]), r0, r1, cs, inv_p));
        }
      }
    } else {
      acc_t val = 0, t = 0;
      if (valid) {
#pragma unroll 4
        for (int64_t c = lane; c < C; c += G) {
          const acc_t wc = w != nullptr ? w[c] : acc_t(1);
          const acc_t n0 = to_acc(a[base + c * stride_c]) * r0, n1 = to_acc(b[base + c * stride_c]) * r1;
          const acc_t d = n0 - n1;
          val += lpips_term(wc, d);
          t += lpips_projection_term(wc, n0, d);
        }
      }
      val = group_sum<G>(val);
      t = group_sum<G>(t);
      pixel_value = val;
      if (GRAD && valid) {
        const acc_t k = acc_t(2) * inv_p * r0;
        for (int64_t c = lane; c < C; c += G) {
          const int64_t off = base + c * stride_c;
          const acc_t wc = w != nullptr ? w[c] : acc_t(1);
          store(g + off, lpips_grad(k, wc, to_acc(a[off]) * r0, to_acc(b[off]) * r1, t));
        }
      }
    }
    acc_t part = valid && lane == 0 ? pixel_value : acc_t(0);
    part = block_sum<kThreads>(part);
    if (threadIdx.x == 0) partials[task] = part;
  }
}

template <typename scalar_t, int KIND, bool GRAD>
void run(bool channels_last, const scalar_t* a, const scalar_t* b, scalar_t* g, const opmath_t<scalar_t>* w,
         opmath_t<scalar_t>* partials, opmath_t<scalar_t>* values, int64_t B, int64_t C, int64_t P,
         cudaStream_t stream) {
  using acc_t = opmath_t<scalar_t>;
  if constexpr (KIND == kMse || KIND == kL1) {
    const int64_t L = C * P, chunks = ceil_div(L, kChunk);
    const acc_t gscale = static_cast<acc_t>((KIND == kMse ? 2.0 : 1.0) / static_cast<double>(L));
    elementwise_kernel<scalar_t, KIND, GRAD>
        <<<grid_for(B * chunks), kThreads, 0, stream>>>(a, b, g, partials, B, L, chunks, gscale);
    launch_reduce_partials(partials, B, chunks, 1.0 / static_cast<double>(L), values, stream);
  } else {
    const int G = group_width(channels_last, C);
    const int64_t tasks = ceil_div(P, kThreads / G);
    const int64_t stride_c = channels_last ? 1 : P, stride_p = channels_last ? C : 1;
    const acc_t inv_p = static_cast<acc_t>(1.0 / static_cast<double>(P));
    const unsigned int grid = l2_resident_grid(B * tasks, int64_t(kThreads / G) * C * 2 * int64_t(sizeof(scalar_t)));
    if (G == kWarp) {
      normalized_kernel<scalar_t, KIND, GRAD, kWarp><<<grid, kThreads, 0, stream>>>(
          a, b, g, w, partials, B, C, P, stride_c, stride_p, tasks, inv_p);
    } else {
      normalized_kernel<scalar_t, KIND, GRAD, 1><<<grid, kThreads, 0, stream>>>(
          a, b, g, w, partials, B, C, P, stride_c, stride_p, tasks, inv_p);
    }
    launch_reduce_partials(partials, B, tasks, 1.0 / static_cast<double>(P), values, stream);
  }
}

template <typename scalar_t, int KIND>
void run_kind(bool channels_last, const scalar_t* a, const scalar_t* b, scalar_t* g, const opmath_t<scalar_t>* w,
              opmath_t<scalar_t>* partials, opmath_t<scalar_t>* values, int64_t B, int64_t C, int64_t P,
              cudaStream_t stream) {
  if (g != nullptr)
    run<scalar_t, KIND, true>(channels_last, a, b, g, w, partials, values, B, C, P, stream);
  else
    run<scalar_t, KIND, false>(channels_last, a, b, g, w, partials, values, B, C, P, stream);
}

}  // namespace

int64_t feature_distance_partials(int kind, bool channels_last, int64_t B, int64_t C, int64_t P) {
  if (kind == kMse || kind == kL1) return B * ceil_div(C * P, kChunk);
  return B * ceil_div(P, kThreads / group_width(channels_last, C));
}

void launch_feature_distance(ElemType t, int kind, bool channels_last, const void* a, const void* b, void* grad,
                             const void* weight, void* partials, void* values, int64_t B, int64_t C, int64_t P,
                             cudaStream_t stream) {
  if (B * C * P == 0) return;
  dispatch_elem(t, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = opmath_t<scalar_t>;
    const auto* ap = static_cast<const scalar_t*>(a);
    const auto* bp = static_cast<const scalar_t*>(b);
    auto* gp = static_cast<scalar_t*>(grad);
    const auto* wp = static_cast<const acc_t*>(weight);
    auto* part = static_cast<acc_t*>(partials);
    auto* vals = static_cast<acc_t*>(values);
    switch (kind) {
      case kMse: run_kind<scalar_t, kMse>(channels_last, ap, bp, gp, wp, part, vals, B, C, P, stream); break;
      case kL1: run_kind<scalar_t, kL1>(channels_last, ap, bp, gp, wp, part, vals, B, C, P, stream); break;
      case kCosine: run_kind<scalar_t, kCosine>(channels_last, ap, bp, gp, wp, part, vals, B, C, P, stream); break;
      default: run_kind<scalar_t, kLpips>(channels_last, ap, bp, gp, wp, part, vals, B, C, P, stream); break;
    }
  });
}

}  // namespace cuda
}  // namespace perfloss
