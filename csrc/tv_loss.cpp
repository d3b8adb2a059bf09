// perfloss::tv_loss — CPU kernel for per-sample total variation and its gradient.
//
// A "row" is one contiguous run of L elements sharing (b, h): (b, c, h, :) in NCHW (L = W, the
// w-neighbour is 1 element away) or (b, h, :, :) in NHWC (L = W*C, the w-neighbour is C elements
// away); the h-neighbour is always the next row. Each task handles whole rows; the gradient of a
// row needs only its own row and its two h-neighbours, so every element is read from memory once.
#include "loss_common.h"

#include <cmath>
#include <string>

namespace perfloss {
namespace {

template <typename acc_t, bool L1>
inline acc_t tv_f(acc_t d) {
  return L1 ? std::abs(d) : d * d;
}

template <typename acc_t, bool L1>
inline acc_t tv_g(acc_t d, acc_t scale) {
  return L1 ? static_cast<acc_t>((d > 0) - (d < 0)) * scale : d * scale;
}

template <typename scalar_t, bool L1, bool GRAD>
void run(const scalar_t* x, scalar_t* g, int64_t B, int64_t rows_per_sample, int64_t H, int64_t L,
         int64_t s, double nh, double nw, at::Tensor& values) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t R = B * rows_per_sample;
  std::vector<acc_t> part_h(R, acc_t(0)), part_w(R, acc_t(0));
  const acc_t gh = static_cast<acc_t>((L1 ? 1.0 : 2.0) / nh);
  const acc_t gw = static_cast<acc_t>((L1 ? 1.0 : 2.0) / nw);
  const int64_t grain = std::max<int64_t>(1, 16384 / L);
  at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(GRAD ? L : 0);
    acc_t* gb = buf.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r % H;
      const scalar_t* xr = x + r * L;
      acc_t sh = 0, sw = 0;
      if (GRAD) {
#pragma omp simd
        for (int64_t j = 0; j < L; ++j) gb[j] = 0;
      }
      if (h + 1 < H) {
        const scalar_t* xn = xr + L;
#pragma omp simd reduction(+ : sh)
        for (int64_t j = 0; j < L; ++j) {
          acc_t d = static_cast<acc_t>(xn[j]) - static_cast<acc_t>(xr[j]);
          sh += tv_f<acc_t, L1>(d);
          if (GRAD) gb[j] -= tv_g<acc_t, L1>(d, gh);
        }
      }
      if (GRAD && h > 0) {
        const scalar_t* xp = xr - L;
#pragma omp simd
        for (int64_t j = 0; j < L; ++j) {
          acc_t d = static_cast<acc_t>(xr[j]) - static_cast<acc_t>(xp[j]);
          gb[j] += tv_g<acc_t, L1>(d, gh);
        }
      }
#pragma omp simd reduction(+ : sw)
      for (int64_t j = 0; j < L - s; ++j) {
        acc_t d = static_cast<acc_t>(xr[j + s]) - static_cast<acc_t>(xr[j]);
        sw += tv_f<acc_t, L1>(d);
        if (GRAD) gb[j] -= tv_g<acc_t, L1>(d, gw);
      }
      if (GRAD) {
        // gb[j] for j >= s gets the difference ending at j; a separate loop keeps it dependence-free.
        acc_t* gs = gb + s;
#pragma omp simd
        for (int64_t j = 0; j < L - s; ++j) {
          acc_t d = static_cast<acc_t>(xr[j + s]) - static_cast<acc_t>(xr[j]);
          gs[j] += tv_g<acc_t, L1>(d, gw);
        }
        scalar_t* gr = g + r * L;
#pragma omp simd
        for (int64_t j = 0; j < L; ++j) gr[j] = static_cast<scalar_t>(gb[j]);
      }
      part_h[r] = sh;
      part_w[r] = sw;
    }
  });
  acc_t* v = values.data_ptr<acc_t>();  // values are in the accumulation type
  for (int64_t b = 0; b < B; ++b) {
    double th = 0.0, tw = 0.0;
    for (int64_t r = b * rows_per_sample; r < (b + 1) * rows_per_sample; ++r) {
      th += static_cast<double>(part_h[r]);
      tw += static_cast<double>(part_w[r]);
    }
    v[b] = static_cast<acc_t>(th / nh + tw / nw);
  }
}

std::tuple<at::Tensor, at::Tensor> tv_loss_cpu(const at::Tensor& x, c10::string_view kind_view, bool compute_grad) {
  loss::check_features(x, "x");
  const std::string kind(kind_view);
  TORCH_CHECK(kind == "l1" || kind == "l2", "kind must be one of ('l1', 'l2'), got '", kind, "'");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "x must be at least 2x2 for total variation, got ", H, "x", W);
  const bool cl = work_channels_last(x);
  const at::Tensor xc = x.contiguous(memory_format_of(cl));
  at::Tensor values = at::empty({B}, x.options().dtype(acc_type(x.scalar_type())));
  loss::GradOut grad;
  if (compute_grad) grad = loss::make_grad(x, cl);
  const int64_t rows_per_sample = cl ? H : C * H;
  const int64_t L = cl ? W * C : W;
  const int64_t s = cl ? C : 1;
  const double nh = static_cast<double>(C * (H - 1) * W), nw = static_cast<double>(C * H * (W - 1));
  const bool l1 = kind == "l1";
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "tv_loss_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* gp = compute_grad ? grad.work.data_ptr<scalar_t>() : nullptr;
    if (l1) {
      if (compute_grad) run<scalar_t, true, true>(xp, gp, B, rows_per_sample, H, L, s, nh, nw, values);
      else run<scalar_t, true, false>(xp, gp, B, rows_per_sample, H, L, s, nh, nw, values);
    } else {
      if (compute_grad) run<scalar_t, false, true>(xp, gp, B, rows_per_sample, H, L, s, nh, nw, values);
      else run<scalar_t, false, false>(xp, gp, B, rows_per_sample, H, L, s, nh, nw, values);
    }
  });
  if (!compute_grad) return {values, x.new_empty({0})};
  return {values, loss::finish_grad(grad)};
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("tv_loss", &perfloss::tv_loss_cpu);
}
