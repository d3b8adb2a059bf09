// The per-element math of the loss heads feature_distance and style_loss: what the CPU kernels
// (csrc/feature_distance.cpp, csrc/style_loss.cpp) and the CUDA kernels (csrc/cuda/feature_distance.cu,
// csrc/cuda/style_loss.cu) both compute, so the CPU tests check the arithmetic the GPU runs. Plain
// scalars only (acc_t is float, or double for float64 inputs): nvcc compiles it without torch.
#pragma once

#include "host_device.h"

#include <math.h>

namespace perfloss {
namespace loss_math {

enum DistanceKind { kMse = 0, kL1 = 1, kCosine = 2, kLpips = 3 };

// Inside the square root of a pixel's channel norm, as in perfloss/ops/feature_distance.py (EPS):
// the gradient stays finite where a feature vector is zero.
constexpr double kNormEps = 1e-10;

PERFLOSS_HD float sqrt_of(float x) { return sqrtf(x); }
PERFLOSS_HD double sqrt_of(double x) { return sqrt(x); }
PERFLOSS_HD float abs_of(float x) { return fabsf(x); }
PERFLOSS_HD double abs_of(double x) { return fabs(x); }

// ---- mse / l1, per element of d = f0 - f1 ---------------------------------------------------------
// The element's term of the per-sample sum (divided by C*H*W afterwards).
template <int KIND, typename acc_t>
PERFLOSS_HD acc_t elementwise_term(acc_t d) {
  return KIND == kMse ? d * d : abs_of(d);
}

// d(value)/d f0 for that element; gscale = 2 / (C H W) for mse, 1 / (C H W) for l1.
template <int KIND, typename acc_t>
PERFLOSS_HD acc_t elementwise_grad(acc_t d, acc_t gscale) {
  return KIND == kMse ? d * gscale : static_cast<acc_t>((d > 0) - (d < 0)) * gscale;
}

// ---- cosine / lpips, per pixel (channel vectors x of f0 and y of f1) ------------------------------
// r = 1 / sqrt(sum_c f_c^2 + EPS): n = f r is the unit-normalised channel vector.
template <typename acc_t>
PERFLOSS_HD acc_t inverse_norm(acc_t sum_of_squares) {
  return acc_t(1) / sqrt_of(sum_of_squares + static_cast<acc_t>(kNormEps));
}

// cosine: the pixel's similarity cs = <x, y> r0 r1 (its term of the value is 1 - cs), and the
// gradient of (1 - cs) / P with respect to x_c: (x_c r0 cs - y_c r1) r0 / P.
template <typename acc_t>
PERFLOSS_HD acc_t cosine_similarity(acc_t sum_xy, acc_t r0, acc_t r1) {
  return sum_xy * r0 * r1;
}

template <typename acc_t>
PERFLOSS_HD acc_t cosine_grad(acc_t x, acc_t y, acc_t r0, acc_t r1, acc_t cs, acc_t inv_p) {
  return (x * r0 * cs - y * r1) * r0 * inv_p;
}

// lpips: with n0 = x r0, n1 = y r1 and d = n0 - n1, the pixel's value is sum_c w_c d_c^2 and the
// gradient needs t = sum_c w_c n0_c d_c: d(value / P)/d x_c = (2 r0 / P) (w_c d_c - n0_c t).
template <typename acc_t>
PERFLOSS_HD acc_t lpips_term(acc_t w, acc_t d) {
  return w * d * d;
}

template <typename acc_t>
PERFLOSS_HD acc_t lpips_projection_term(acc_t w, acc_t n0, acc_t d) {
  return w * n0 * d;
}

// k = 2 r0 / P (per pixel).
template <typename acc_t>
PERFLOSS_HD acc_t lpips_grad(acc_t k, acc_t w, acc_t n0, acc_t n1, acc_t t) {
  return k * (w * (n0 - n1) - n0 * t);
}

// ---- style loss epilogue, per Gram entry ----------------------------------------------------------
// D_ij = G_ij / (C H W) - T_ij from the unnormalised Gram entry; the value is sum_ij D_ij^2.
template <typename acc_t>
PERFLOSS_HD acc_t style_difference(acc_t gram, acc_t inv_n, acc_t target) {
  return gram * inv_n - target;
}

// S_ij = 2 (D_ij + D_ji) / (C H W), symmetric: the gradient is S F.
template <typename acc_t>
PERFLOSS_HD acc_t style_grad_factor(acc_t d_ij, acc_t d_ji, acc_t two_inv_n) {
  return (d_ij + d_ji) * two_inv_n;
}

}  // namespace loss_math
}  // namespace perfloss
