// perfloss::gram — CPU Gram matrices G = F F^T (/ (C H W) when normalised).
//
// fp32 and float64 features: one ATen batched GEMM (loss_common.h's gram_products, which style_loss
// runs too), then its upper triangle scaled and mirrored: style_loss(x, gram(x)) is exactly 0 (the
// same products of the upper triangle, scaled by the same rounded 1 / (C H W)). Half and bfloat16:
// split-K over H*W, upper-triangle tiles only (loss_common.h), accumulated in fp32 from NCHW or NHWC
// without a converted copy, mirrored as it is written out.
#include "loss_common.h"

namespace perfloss {
namespace {

// G (B, C, C) becomes its upper triangle times sc, mirrored onto the lower, 32 rows at a time (a task
// owns 32 rows' upper part and the 32 columns it mirrors to: no two tasks meet).
template <typename scalar_t>
void upper_scaled_and_mirrored(scalar_t* G, int64_t B, int64_t C, scalar_t sc) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = ceil_div(C, kTile);
  at::parallel_for(0, B * row_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      scalar_t* g = G + (t / row_tiles) * C * C;
      const int64_t i0 = (t % row_tiles) * kTile, i1 = std::min(i0 + kTile, C);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = i; j < C; ++j) g[i * C + j] *= sc;
      // row by row below: contiguous writes, reads down the tile's few columns (in cache)
      for (int64_t j = i0 + 1; j < C; ++j)
        for (int64_t i = i0; i < std::min(i1, j); ++i) g[j * C + i] = g[i * C + j];
    }
  });
}

at::Tensor gram_cpu(const at::Tensor& features, bool normalize) {
  loss::check_features(features, "features");
  const int64_t B = features.size(0), C = features.size(1), N = features.size(2) * features.size(3);
  const bool cl = work_channels_last(features);
  const at::Tensor x = features.contiguous(memory_format_of(cl));
  const double scale = normalize ? 1.0 / static_cast<double>(C * N) : 1.0;
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) {
    at::Tensor G = loss::gram_products(x, cl);
    AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "gram_cpu", [&] {
      upper_scaled_and_mirrored(G.data_ptr<scalar_t>(), B, C, static_cast<scalar_t>(scale));
    });
    return G;
  }
  at::Tensor out = at::empty({B, C, C}, features.options());
  const int64_t Cp = loss::gram_padded_channels(C);
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "gram_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> G = loss::gram_upper<scalar_t, acc_t>(x.data_ptr<scalar_t>(), cl, B, C, N);
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t sc = static_cast<acc_t>(scale);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = i; j < C; ++j) {
          const scalar_t g = static_cast<scalar_t>(G[(b * Cp + i) * Cp + j] * sc);
          o[(b * C + i) * C + j] = g;
          o[(b * C + j) * C + i] = g;
        }
  });
  return out;
}

}  // namespace
}  // namespace perfloss

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("gram", &perfloss::gram_cpu);
}
