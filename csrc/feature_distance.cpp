// perfloss::feature_distance — CPU kernel for per-sample feature distances and d/d f0.
//
// One pass over f0 and f1: mse/l1 stream each sample's C*H*W elements (the same order in NCHW and
// NHWC, since f0, f1 and the gradient share one layout); cosine/lpips work on blocks of pixels whose
// channel columns stay in cache between the norm pass and the value/gradient passes. fp32 (float64
// for float64) accumulation; per-task partial sums are added per sample in a fixed order. The
// per-element math is loss_math.h's, which the CUDA kernel (csrc/cuda/feature_distance.cu) runs too.
#include "loss_common.h"
#include "loss_math.h"

namespace perfloss {
namespace {

using namespace loss_math;

// ---- mse / l1: elementwise over each sample -------------------------------------------------
template <typename scalar_t, typename acc_t, int KIND, bool GRAD>
acc_t elementwise_chunk(const scalar_t* a, const scalar_t* b, scalar_t* g, int64_t n, acc_t gscale) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    acc_t d = static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]);
    s += elementwise_term<KIND>(d);
    if (GRAD) g[i] = static_cast<scalar_t>(elementwise_grad<KIND>(d, gscale));
  }
  return s;
}

template <typename scalar_t, int KIND, bool GRAD>
void run_elementwise(const scalar_t* a, const scalar_t* b, scalar_t* g, int64_t B, int64_t L,
                     at::Tensor& values) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = ceil_div(L, kChunk);
  std::vector<acc_t> partials(B * chunks, acc_t(0));
  const acc_t gscale = static_cast<acc_t>((KIND == kMse ? 2.0 : 1.0) / static_cast<double>(L));
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = t / chunks, c = t % chunks;
      const int64_t off = s * L + c * kChunk;
      const int64_t n = std::min(kChunk, L - c * kChunk);
      partials[t] = elementwise_chunk<scalar_t, acc_t, KIND, GRAD>(a + off, b + off, GRAD ? g + off : nullptr, n, gscale);
    }
  });
  loss::reduce_partials(partials, B, chunks, 1.0 / static_cast<double>(L), values);
}

// ---- cosine / lpips: per-pixel channel reductions -----------------------------------------
// NCHW: a block of PB pixels, channel loop outside, pixel loop inside (contiguous, vectorised).
template <typename scalar_t, int KIND, bool GRAD>
void run_normalized_nchw(const scalar_t* a, const scalar_t* b, scalar_t* g, const double* w, int64_t B,
                         int64_t C, int64_t P, at::Tensor& values) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t PB = 64;
  const int64_t blocks = ceil_div(P, PB);
  std::vector<acc_t> partials(B * blocks, acc_t(0));
  const acc_t inv_p = static_cast<acc_t>(1.0 / static_cast<double>(P));
  std::vector<acc_t> wv(C, acc_t(1));
  if (w != nullptr)
    for (int64_t c = 0; c < C; ++c) wv[c] = static_cast<acc_t>(w[c]);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t s00[PB], s11[PB], s01[PB], r0[PB], r1[PB], t[PB];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / blocks, p0 = (task % blocks) * PB;
      const int64_t np = std::min(PB, P - p0);
      const scalar_t* as = a + s * C * P + p0;
      const scalar_t* bs = b + s * C * P + p0;
      for (int64_t p = 0; p < PB; ++p) s00[p] = s11[p] = s01[p] = t[p] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* ac = as + c * P;
        const scalar_t* bc = bs + c * P;
#pragma omp simd
        for (int64_t p = 0; p < np; ++p) {
          acc_t x = static_cast<acc_t>(ac[p]), y = static_cast<acc_t>(bc[p]);
          s00[p] += x * x;
          s11[p] += y * y;
          s01[p] += x * y;
        }
      }
      acc_t part = 0;
      for (int64_t p = 0; p < np; ++p) {
        r0[p] = inverse_norm(s00[p]);
        r1[p] = inverse_norm(s11[p]);
      }
      if (KIND == kCosine) {
        for (int64_t p = 0; p < np; ++p) {
          t[p] = cosine_similarity(s01[p], r0[p], r1[p]);
          part += acc_t(1) - t[p];
        }
        if (GRAD) {
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* ac = as + c * P;
            const scalar_t* bc = bs + c * P;
            scalar_t* gc = g + s * C * P + p0 + c * P;
#pragma omp simd
            for (int64_t p = 0; p < np; ++p) {
              acc_t x = static_cast<acc_t>(ac[p]), y = static_cast<acc_t>(bc[p]);
              gc[p] = static_cast<scalar_t>(cosine_grad(x, y, r0[p], r1[p], t[p], inv_p));
            }
          }
        }
      } else {
        acc_t val[PB];
        for (int64_t p = 0; p < PB; ++p) val[p] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* ac = as + c * P;
          const scalar_t* bc = bs + c * P;
          const acc_t wc = wv[c];
#pragma omp simd
          for (int64_t p = 0; p < np; ++p) {
            acc_t n0 = static_cast<acc_t>(ac[p]) * r0[p], n1 = static_cast<acc_t>(bc[p]) * r1[p];
            acc_t d = n0 - n1;
            val[p] += lpips_term(wc, d);
            t[p] += lpips_projection_term(wc, n0, d);
          }
        }
        for (int64_t p = 0; p < np; ++p) part += val[p];
        if (GRAD) {
          const acc_t two_inv_p = acc_t(2) * inv_p;
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* ac = as + c * P;
            const scalar_t* bc = bs + c * P;
            scalar_t* gc = g + s * C * P + p0 + c * P;
            const acc_t wc = wv[c];
#pragma omp simd
            for (int64_t p = 0; p < np; ++p) {
              acc_t n0 = static_cast<acc_t>(ac[p]) * r0[p], n1 = static_cast<acc_t>(bc[p]) * r1[p];
              gc[p] = static_cast<scalar_t>(lpips_grad(two_inv_p * r0[p], wc, n0, n1, t[p]));
            }
          }
        }
      }
      partials[task] = part;
    }
  });
  loss::reduce_partials(partials, B, blocks, 1.0 / static_cast<double>(P), values);
}

// NHWC: each pixel's channel vector is contiguous; the channel loops are the vectorised ones.
template <typename scalar_t, int KIND, bool GRAD>
void run_normalized_nhwc(const scalar_t* a, const scalar_t* b, scalar_t* g, const double* w, int64_t B,
                         int64_t C, int64_t P, at::Tensor& values) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t PB = std::max<int64_t>(1, 8192 / C);
  const int64_t blocks = ceil_div(P, PB);
  std::vector<acc_t> partials(B * blocks, acc_t(0));
  const acc_t inv_p = static_cast<acc_t>(1.0 / static_cast<double>(P));
  std::vector<acc_t> wv(C, acc_t(1));
  if (w != nullptr)
    for (int64_t c = 0; c < C; ++c) wv[c] = static_cast<acc_t>(w[c]);
  const acc_t* wp = wv.data();
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / blocks, p0 = (task % blocks) * PB;
      const int64_t np = std::min(PB, P - p0);
      acc_t part = 0;
      for (int64_t p = p0; p < p0 + np; ++p) {
        const int64_t off = (s * P + p) * C;
        const scalar_t* ac = a + off;
        const scalar_t* bc = b + off;
        acc_t s00 = 0, s11 = 0, s01 = 0;
#pragma omp simd reduction(+ : s00, s11, s01)
        for (int64_t c = 0; c < C; ++c) {
          acc_t x = static_cast<acc_t>(ac[c]), y = static_cast<acc_t>(bc[c]);
          s00 += x * x;
          s11 += y * y;
          s01 += x * y;
        }
        const acc_t r0 = inverse_norm(s00), r1 = inverse_norm(s11);
        if (KIND == kCosine) {
          const acc_t cs = cosine_similarity(s01, r0, r1);
          part += acc_t(1) - cs;
          if (GRAD) {
            scalar_t* gc = g + off;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              acc_t x = static_cast<acc_t>(ac[c]), y = static_cast<acc_t>(bc[c]);
              gc[c] = static_cast<scalar_t>(cosine_grad(x, y, r0, r1, cs, inv_p));
            }
          }
        } else {
          acc_t val = 0, t = 0;
#pragma omp simd reduction(+ : val, t)
          for (int64_t c = 0; c < C; ++c) {
            acc_t n0 = static_cast<acc_t>(ac[c]) * r0, n1 = static_cast<acc_t>(bc[c]) * r1;
            acc_t d = n0 - n1;
            val += lpips_term(wp[c], d);
            t += lpips_projection_term(wp[c], n0, d);
          }
          part += val;
          if (GRAD) {
            scalar_t* gc = g + off;
            const acc_t k = acc_t(2) * inv_p * r0;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              acc_t n0 = static_cast<acc_t>(ac[c]) * r0, n1 = static_cast<acc_t>(bc[c]) * r1;
              gc[c] = static_cast<scalar_t>(lpips_grad(k, wp[c], n0, n1, t));
            }
          }
        }
      }
      partials[task] = part;
    }
  });
  loss::reduce_partials(partials, B, blocks, 1.0 / static_cast<double>(P), values);
}

template <typename scalar_t, int KIND, bool GRAD>
void run(const scalar_t* a, const scalar_t* b, scalar_t* g, const double* w, int64_t B, int64_t C,
         int64_t P, bool channels_last, at::Tensor& values) {
  if (KIND == kMse || KIND == kL1) {
    run_elementwise<scalar_t, KIND, GRAD>(a, b, g, B, C * P, values);
  } else if (channels_last) {
    run_normalized_nhwc<scalar_t, KIND, GRAD>(a, b, g, w, B, C, P, values);
  } else {
    run_normalized_nchw<scalar_t, KIND, GRAD>(a, b, g, w, B, C, P, values);
  }
}

template <typename scalar_t, int KIND>
void run_kind(const scalar_t* a, const scalar_t* b, scalar_t* g, const double* w, int64_t B, int64_t C,
              int64_t P, bool cl, at::Tensor& values) {
  if (g != nullptr)
    run<scalar_t, KIND, true>(a, b, g, w, B, C, P, cl, values);
  else
    run<scalar_t, KIND, false>(a, b, g, w, B, C, P, cl, values);
}

std::tuple<at::Tensor, at::Tensor> feature_distance_cpu(const at::Tensor& f0, const at::Tensor& f1,
                                                        c10::string_view kind_view,
                                                        const std::optional<at::Tensor>& weight,
                                                        bool compute_grad) {
  const int kind = loss::check_distance_args(f0, f1, kind_view, weight, at::kCPU);
  const int64_t B = f0.size(0), C = f0.size(1), P = f0.size(2) * f0.size(3);
  at::Tensor w64;
  if (weight.has_value() && weight->defined()) w64 = weight->detach().to(at::kDouble).contiguous();
  const bool cl = work_channels_last(f0);
  const at::Tensor a = f0.contiguous(memory_format_of(cl));
  const at::Tensor b = f1.contiguous(memory_format_of(cl));
  at::Tensor values = at::empty({B}, f0.options().dtype(acc_type(f0.scalar_type())));
  loss::GradOut grad;
  if (compute_grad) grad = loss::make_grad(f0, cl);
  const double* w = w64.defined() ? w64.data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "feature_distance_cpu", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* gp = compute_grad ? grad.work.data_ptr<scalar_t>() : nullptr;
    switch (kind) {
      case kMse: run_kind<scalar_t, kMse>(ap, bp, gp, w, B, C, P, cl, values); break;
      case kL1: run_kind<scalar_t, kL1>(ap, bp, gp, w, B, C, P, cl, values); break;
      case kCosine: run_kind<scalar_t, kCosine>(ap, bp, gp, w, B, C, P, cl, values); break;
      default: run_kind<scalar_t, kLpips>(ap, bp, gp, w, B, C, P, cl, values); break;
    }
  });
  if (!compute_grad) return {values, f0.new_empty({0})};
  return {values, loss::finish_grad(grad)};
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("feature_distance", &perfloss::feature_distance_cpu);
}
