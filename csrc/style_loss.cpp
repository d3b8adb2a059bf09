// perfloss::style_loss — CPU style loss sum_ij (G - T)_ij^2 per sample and, in the same call,
// the gradient 2 (D + D^T) F / (C H W) with D = G - T, G = F F^T / (C H W).
//
// Two products: the Gram, then grad = S F (S = 2 (D + D^T) / (C H W), symmetric), in the features'
// layout. fp32 and float64 features run both as ATen batched GEMMs (the Gram: loss_common.h's
// gram_products, as gram runs it). At VGG-16's four style taps (128x128 images, batches 1 and 4, 2
// threads, AVX-512) the op took 0.55-0.85x the time of the packed kernels (0.55-0.75x from relu2_2 on).
// Half and bfloat16 features run the packed kernels: the split-K Gram of loss_common.h, then F re-read
// once in k-chunks, grad^T = P S chunk by chunk; both accumulate in fp32 with no converted copy of the
// features. The per-entry math of D and S is loss_math.h's, which the CUDA epilogue
// (csrc/cuda/style_loss.cu) runs too.
#include "loss_common.h"
#include "loss_math.h"

#include <type_traits>

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

// Every sample's value sum_ij D_ij^2 (D = G / (C H W) - T) into `values` and, when asked, S written
// over G ((B, C, C), samples gs apart, rows ld apart). Only G's upper triangle is read (a Gram is
// symmetric; a GEMM's lower triangle may round differently, the packed Gram has none): D_ij and
// D_ji both come from G_ij, so each pair is read once and S_ij = S_ji written once, in 32x32 tile
// pairs. A task owns the pairs whose first index is in its 32 rows (no two tasks
// meet); it sums its share of the value in double, and the shares are added in task order
// (deterministic).
template <typename acc_t>
void difference_and_s(acc_t* G, int64_t gs, int64_t ld, const acc_t* T, int64_t tb, int64_t ti, int64_t tj,
                      int64_t B, int64_t C, acc_t inv_n, bool compute_grad, acc_t* values) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = ceil_div(C, kTile);
  const acc_t two_inv_n = 2 * inv_n;
  std::vector<double> shares(B * row_tiles);
  at::parallel_for(0, B * row_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      acc_t* g = G + (task / row_tiles) * gs;
      const acc_t* t = T + (task / row_tiles) * tb;
      const int64_t i0 = (task % row_tiles) * kTile, i1 = std::min(i0 + kTile, C);
      double v = 0.0;
      for (int64_t j0 = i0; j0 < C; j0 += kTile) {
        const int64_t j1 = std::min(j0 + kTile, C);
        for (int64_t i = i0; i < i1; ++i) {
          acc_t part = 0;
          for (int64_t j = std::max(j0, i); j < j1; ++j) {
            const acc_t d_ij = loss_math::style_difference(g[i * ld + j], inv_n, t[i * ti + j * tj]);
            const acc_t d_ji = loss_math::style_difference(g[i * ld + j], inv_n, t[j * ti + i * tj]);
            part += j == i ? d_ij * d_ij : d_ij * d_ij + d_ji * d_ji;
            if (compute_grad) {
              const acc_t s = loss_math::style_grad_factor(d_ij, d_ji, two_inv_n);
              g[i * ld + j] = s;
              g[j * ld + i] = s;
            }
          }
          v += static_cast<double>(part);
        }
      }
      shares[task] = v;
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    double v = 0.0;
    for (int64_t r = 0; r < row_tiles; ++r) v += shares[b * row_tiles + r];
    values[b] = static_cast<acc_t>(v);
  }
}

template <typename scalar_t>
void style_loss_impl(const at::Tensor& x, bool cl, const at::Tensor& T, int64_t tb, int64_t ti, int64_t tj,
                     at::Tensor& values, at::Tensor* grad, int64_t B, int64_t C, int64_t N) {
  const bool compute_grad = grad != nullptr;
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_n = static_cast<acc_t>(1.0 / static_cast<double>(C * N));
  const acc_t* tp = T.data_ptr<acc_t>();
  acc_t* vp = values.data_ptr<acc_t>();
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    at::Tensor S = loss::gram_products(x, cl);
    difference_and_s(S.data_ptr<acc_t>(), C * C, C, tp, tb, ti, tj, B, C, inv_n, compute_grad, vp);
    if (!compute_grad) return;
    // grad = S F in the features' layout, written straight into the gradient; S is symmetric
    if (cl) {
      at::Tensor out = grad->permute({0, 2, 3, 1}).view({B, N, C});
      at::bmm_out(out, loss::sample_rows(x, cl), S);
    } else {
      at::Tensor out = grad->view({B, C, N});
      at::bmm_out(out, S, loss::sample_rows(x, cl));
    }
    return;
  }
  const int64_t Cp = loss::gram_padded_channels(C);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  std::vector<acc_t> S = loss::gram_upper<scalar_t, acc_t>(xp, cl, B, C, N);
  difference_and_s(S.data(), Cp * Cp, Cp, tp, tb, ti, tj, B, C, inv_n, compute_grad, vp);
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
