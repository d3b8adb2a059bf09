// perfloss::style_loss — CPU style loss sum_ij (G - T)_ij^2 per sample and, in the same call,
// the gradient 2 (D + D^T) F / (C H W) with D = G - T, G = F F^T / (C H W).
//
// Pass 1 is the split-K Gram of loss_common.h; pass 2 re-reads F once in k-chunks and writes
// grad^T = P S (S = 2 (D + D^T) / (C H W), symmetric) chunk by chunk, in the features' layout. The
// per-entry math of D and S is loss_math.h's, which the CUDA epilogue (csrc/cuda/style_loss.cu) runs too.
#include "loss_common.h"
#include "loss_math.h"

namespace perfloss {
namespace {

// O (kcp x Cp) = P (kcp x Cp) S (Cp x Cp), both zero padded; only the first C columns of P matter.
template <typename acc_t>
PERFLOSS_HOT_CLONES void panel_times_s(const acc_t* P, int64_t kcp, int64_t C, int64_t Cp, const acc_t* S, acc_t* O) {
  constexpr int64_t MR = loss::kGramMR, NR = loss::kGramNR;
  // Column blocks outside: the S block (C x NR) stays in L1 while the k rows stream past it.
  for (int64_t i0 = 0; i0 < Cp; i0 += NR) {
    for (int64_t k0 = 0; k0 < kcp; k0 += MR) {
      acc_t acc[MR][NR];
      for (int64_t r = 0; r < MR; ++r)
        for (int64_t s = 0; s < NR; ++s) acc[r][s] = 0;
      for (int64_t j = 0; j < C; ++j) {
        const acc_t* srow = S + j * Cp + i0;
        for (int64_t r = 0; r < MR; ++r) {
          const acc_t a = P[(k0 + r) * Cp + j];
#pragma omp simd
          for (int64_t s = 0; s < NR; ++s) acc[r][s] += a * srow[s];
        }
      }
      for (int64_t r = 0; r < MR; ++r) {
        acc_t* o = O + (k0 + r) * Cp + i0;
#pragma omp simd
        for (int64_t s = 0; s < NR; ++s) o[s] = acc[r][s];
      }
    }
  }
}

template <typename scalar_t>
void style_loss_impl(const at::Tensor& x, bool cl, const at::Tensor& T, int64_t tb, int64_t ti, int64_t tj,
                     at::Tensor& values, at::Tensor* grad, int64_t B, int64_t C, int64_t N) {
  const bool compute_grad = grad != nullptr;
  const int64_t Cp = loss::gram_padded_channels(C);
  const double inv_n = 1.0 / static_cast<double>(C * N);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  std::vector<acc_t> S = loss::gram_full<scalar_t, acc_t>(xp, cl, B, C, N);
  const acc_t* tp = T.data_ptr<acc_t>();
  acc_t* vp = values.data_ptr<acc_t>();
  const acc_t sc = static_cast<acc_t>(inv_n), gsc = static_cast<acc_t>(2.0 * inv_n);
  for (int64_t b = 0; b < B; ++b) {
    acc_t* G = S.data() + b * Cp * Cp;
    double v = 0.0;
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = 0; j < C; ++j) {
        const acc_t d = loss_math::style_difference(G[i * Cp + j], sc, tp[b * tb + i * ti + j * tj]);
        v += static_cast<double>(d) * static_cast<double>(d);
        G[i * Cp + j] = d;  // G becomes D in place
      }
    vp[b] = static_cast<acc_t>(v);
    if (!compute_grad) continue;
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = i; j < C; ++j) {
        const acc_t s = loss_math::style_grad_factor(G[i * Cp + j], G[j * Cp + i], gsc);
        G[i * Cp + j] = s;
        G[j * Cp + i] = s;
      }
  }
  if (!compute_grad) return;
  scalar_t* gp = grad->data_ptr<scalar_t>();
  const int64_t KC = loss::gram_chunk(Cp);
  const int64_t chunks = ceil_div(N, KC);
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t kcp_max = ceil_div(KC, loss::kGramMR) * loss::kGramMR;
    std::vector<acc_t> panel(kcp_max * Cp), out(kcp_max * Cp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, k0 = (t % chunks) * KC, kc = std::min(KC, N - k0);
      const int64_t kcp = ceil_div(kc, loss::kGramMR) * loss::kGramMR;
      loss::gram_pack(xp + b * C * N, cl, C, N, k0, kc, Cp, panel.data());
      panel_times_s(panel.data(), kcp, C, Cp, S.data() + b * Cp * Cp, out.data());
      scalar_t* gb = gp + b * C * N;
      if (cl) {
        for (int64_t k = 0; k < kc; ++k) {
          scalar_t* dst = gb + (k0 + k) * C;
          const acc_t* src = out.data() + k * Cp;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(src[c]);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          scalar_t* dst = gb + c * N + k0;
          for (int64_t k = 0; k < kc; ++k) dst[k] = static_cast<scalar_t>(out[k * Cp + c]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> style_loss_cpu(const at::Tensor& features, const at::Tensor& target_gram,
                                                  bool compute_grad) {
  loss::check_features(features, "features");
  const int64_t B = features.size(0), C = features.size(1), N = features.size(2) * features.size(3);
  loss::check_target_gram(target_gram, features);
  const bool cl = work_channels_last(features);
  const at::Tensor x = features.contiguous(memory_format_of(cl));
  const at::ScalarType vt = acc_type(features.scalar_type());
  const at::Tensor T = target_gram.to(vt);
  const int64_t tb = T.size(0) == 1 ? 0 : T.stride(0), ti = T.stride(1), tj = T.stride(2);
  at::Tensor values = at::empty({B}, features.options().dtype(vt));
  loss::GradOut grad;
  if (compute_grad) grad = loss::make_grad(features, cl);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "style_loss_cpu", [&] {
    style_loss_impl<scalar_t>(x, cl, T, tb, ti, tj, values, compute_grad ? &grad.work : nullptr, B, C, N);
  });
  if (!compute_grad) return {values, features.new_empty({0})};
  return {values, loss::finish_grad(grad)};
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("style_loss", &perfloss::style_loss_cpu);
}
