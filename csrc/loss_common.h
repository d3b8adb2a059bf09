// Helpers shared by the CPU kernels of the loss ops (gram, style_loss, feature_distance, tv_loss); the
// argument checks and gradient layout also serve the CUDA kernels' glue (csrc/cuda/*_ops.cpp).
#pragma once

#include "common.h"
#include "loss_math.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

// Hot loops get AVX-512 / AVX2 clones picked at load time by CPU features (GCC function
// multiversioning); other compilers and CPUs use the baseline build.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PERFLOSS_HOT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PERFLOSS_HOT_CLONES
#endif

namespace perfloss {
namespace loss {

// `device`: the kind of device the calling kernel runs on (the CUDA kernels' glue passes at::kCUDA).
inline void check_features(const at::Tensor& x, const char* name, at::DeviceType device = at::kCPU) {
  TORCH_CHECK(x.dim() == 4, name, " must be a 4-D (B, C, H, W) tensor, got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, name, " must not be empty");
  TORCH_CHECK(x.device().type() == device, name, " must be a ", c10::DeviceTypeName(device), " tensor, got one on ",
              x.device());
}

// feature_distance's arguments, checked alike by its CPU and CUDA kernels; returns the kind as a
// loss_math::DistanceKind.
inline int check_distance_args(const at::Tensor& f0, const at::Tensor& f1, c10::string_view kind,
                               const std::optional<at::Tensor>& weight, at::DeviceType device) {
  check_features(f0, "f0", device);
  TORCH_CHECK(f0.device() == f1.device(), "f0 and f1 must be on the same device, got ", f0.device(), " and ",
              f1.device());
  check_features(f1, "f1", device);
  TORCH_CHECK(f0.sizes() == f1.sizes(), "f0 and f1 must have the same shape, got ", f0.sizes(), " and ", f1.sizes());
  TORCH_CHECK(f0.scalar_type() == f1.scalar_type(), "f0 and f1 must have the same dtype");
  int k = -1;
  if (kind == "mse") k = loss_math::kMse;
  if (kind == "l1") k = loss_math::kL1;
  if (kind == "cosine") k = loss_math::kCosine;
  if (kind == "lpips") k = loss_math::kLpips;
  TORCH_CHECK(k >= 0, "kind must be one of ('mse', 'l1', 'cosine', 'lpips'), got '", std::string(kind), "'");
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(k == loss_math::kLpips, "weight is only used by kind='lpips'");
    TORCH_CHECK(weight->numel() == f0.size(1), "weight must have one entry per channel (", f0.size(1), "), got ",
                weight->sizes());
    TORCH_CHECK(weight->device() == f0.device(), "weight must be on f0's device (", f0.device(), "), got ",
                weight->device());
  }
  return k;
}

// style_loss's target Gram for features (B, C, ...): (B or 1, C, C) on the features' device.
inline void check_target_gram(const at::Tensor& target_gram, const at::Tensor& features) {
  const int64_t B = features.size(0), C = features.size(1);
  TORCH_CHECK(target_gram.dim() == 3 && target_gram.size(1) == C && target_gram.size(2) == C &&
                  (target_gram.size(0) == B || target_gram.size(0) == 1),
              "target_gram must be (", B, " or 1, ", C, ", ", C, "), got ", target_gram.sizes());
  TORCH_CHECK(target_gram.device() == features.device(), "target_gram must be on the features' device (",
              features.device(), "), got ", target_gram.device());
  TORCH_CHECK(at::isFloatingType(target_gram.scalar_type()), "target_gram must be floating point, got ",
              target_gram.scalar_type());
}

// A gradient tensor laid out exactly as torch.empty_like(like) (what the fake kernels return), and the
// dense tensor in `channels_last`-or-contiguous layout the kernel writes into (the same tensor when
// the layouts agree; otherwise finish_grad copies it over).
struct GradOut {
  at::Tensor out;
  at::Tensor work;
};

inline GradOut make_grad(const at::Tensor& like, bool channels_last) {
  GradOut g;
  g.out = at::empty_like(like);
  if (g.out.is_contiguous(memory_format_of(channels_last))) {
    g.work = g.out;
  } else {
    g.work = at::empty(like.sizes(), like.options().memory_format(memory_format_of(channels_last)));
  }
  return g;
}

inline at::Tensor finish_grad(GradOut& g) {
  if (!g.work.is_same(g.out)) g.out.copy_(g.work);
  return g.out;
}

// Sum per-task partial sums into per-sample values in a fixed order (deterministic), in double.
template <typename acc_t>
inline void reduce_partials(const std::vector<acc_t>& partials, int64_t batch, int64_t per_sample,
                            double scale, at::Tensor& values) {
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "reduce_partials", [&] {
    scalar_t* v = values.data_ptr<scalar_t>();
    for (int64_t b = 0; b < batch; ++b) {
      double s = 0.0;
      for (int64_t t = 0; t < per_sample; ++t) s += static_cast<double>(partials[b * per_sample + t]);
      v[b] = static_cast<scalar_t>(s * scale);
    }
  });
}


// ---- Gram machinery (shared by gram.cpp and style_loss.cpp) ------------------------------------
// A dense (B, C, H, W) tensor in its working layout as each sample's rows in memory order:
// (B, C, H*W) in NCHW, (B, H*W, C) in NHWC. A view.
inline at::Tensor sample_rows(const at::Tensor& x, bool channels_last) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2) * x.size(3);
  return channels_last ? x.permute({0, 2, 3, 1}).reshape({B, N, C}) : x.reshape({B, C, N});
}

// fp32 and float64 features: each sample's Gram F F^T (unnormalised) as one ATen batched GEMM, so the
// BLAS picks its kernels for the CPU it runs on (this file is built for baseline x86-64). BLAS
// kernels round G_ij and G_ji differently: gram and style_loss read the upper triangle only, so
// that style_loss(x, gram(x)) is exactly 0.
inline at::Tensor gram_products(const at::Tensor& x, bool channels_last) {
  const at::Tensor rows = sample_rows(x, channels_last);
  return channels_last ? at::bmm(rows.transpose(1, 2), rows) : at::bmm(rows, rows.transpose(1, 2));
}

// A sample's features are F (C x N), N = H*W. Work goes in k-chunks of `kc` pixels: a chunk is
// packed k-major into a panel P (kcp x Cp) of the accumulation type, Cp = C rounded up to NR and
// kcp = kc rounded up to MR, zero padded, so the micro-kernels have no edge cases. In NHWC the
// panel is a straight copy of kc contiguous channel vectors; in NCHW it is a transpose.
constexpr int64_t kGramMR = 8;
constexpr int64_t kGramNR = 16;

inline int64_t gram_padded_channels(int64_t C) { return ceil_div(C, kGramNR) * kGramNR; }

// Pixels per chunk: keeps a panel around 64 KiB of fp32.
inline int64_t gram_chunk(int64_t Cp) { return std::max<int64_t>(32, std::min<int64_t>(512, 16384 / Cp)); }

template <typename scalar_t, typename acc_t>
void gram_pack(const scalar_t* x, bool channels_last, int64_t C, int64_t N, int64_t k0, int64_t kc,
               int64_t Cp, acc_t* P) {
  const int64_t kcp = ceil_div(kc, kGramMR) * kGramMR;
  std::fill(P, P + kcp * Cp, acc_t(0));
  if (channels_last) {
    for (int64_t k = 0; k < kc; ++k) {
      const scalar_t* src = x + (k0 + k) * C;
      acc_t* dst = P + k * Cp;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c]);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* src = x + c * N + k0;
      for (int64_t k = 0; k < kc; ++k) P[k * Cp + c] = static_cast<acc_t>(src[k]);
    }
  }
}

// G (Cp x Cp) += P^T P on the tiles that touch the upper triangle (i <= j) only.
template <typename acc_t>
PERFLOSS_HOT_CLONES void gram_syrk_panel(const acc_t* P, int64_t kc, int64_t Cp, acc_t* G) {
  constexpr int64_t MR = kGramMR, NR = kGramNR;
  for (int64_t i0 = 0; i0 < Cp; i0 += MR) {
    for (int64_t j0 = (i0 / NR) * NR; j0 < Cp; j0 += NR) {
      acc_t acc[MR][NR];
      for (int64_t r = 0; r < MR; ++r)
        for (int64_t s = 0; s < NR; ++s) acc[r][s] = 0;
      for (int64_t k = 0; k < kc; ++k) {
        const acc_t* row = P + k * Cp;
        for (int64_t r = 0; r < MR; ++r) {
          const acc_t a = row[i0 + r];
#pragma omp simd
          for (int64_t s = 0; s < NR; ++s) acc[r][s] += a * row[j0 + s];
        }
      }
      for (int64_t r = 0; r < MR; ++r) {
        acc_t* g = G + (i0 + r) * Cp + j0;
#pragma omp simd
        for (int64_t s = 0; s < NR; ++s) g[s] += acc[r][s];
      }
    }
  }
}

// Unnormalised Gram of every sample in the accumulation type, (B, Cp, Cp), its upper triangle
// (i <= j < C) only (the rest is 0), computed split-K over N with per-split partial matrices summed in
// a fixed order (deterministic).
template <typename scalar_t, typename acc_t>
std::vector<acc_t> gram_upper(const scalar_t* x, bool channels_last, int64_t B, int64_t C, int64_t N) {
  const int64_t Cp = gram_padded_channels(C);
  const int64_t KC = gram_chunk(Cp);
  const int64_t chunks = ceil_div(N, KC);
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(chunks, ceil_div(threads, B)));
  std::vector<acc_t> part(B * splits * Cp * Cp, acc_t(0));
  at::parallel_for(0, B * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> panel(ceil_div(KC, kGramMR) * kGramMR * Cp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / splits, sp = t % splits;
      const int64_t c_begin = sp * chunks / splits, c_end = (sp + 1) * chunks / splits;
      const scalar_t* xb = x + b * C * N;
      acc_t* G = part.data() + t * Cp * Cp;
      for (int64_t ch = c_begin; ch < c_end; ++ch) {
        const int64_t k0 = ch * KC, kc = std::min(KC, N - k0);
        gram_pack(xb, channels_last, C, N, k0, kc, Cp, panel.data());
        gram_syrk_panel(panel.data(), kc, Cp, G);
      }
    }
  });
  std::vector<acc_t> out(B * Cp * Cp, acc_t(0));
  for (int64_t b = 0; b < B; ++b) {
    acc_t* G = out.data() + b * Cp * Cp;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const acc_t* src = part.data() + (b * splits + sp) * Cp * Cp;
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = i; j < C; ++j) G[i * Cp + j] += src[i * Cp + j];
    }
  }
  return out;
}

}  // namespace loss
}  // namespace perfloss
