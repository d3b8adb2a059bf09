// The per-element math of a perceptual gradient network's fused input and output stages
// (perfloss/ops/pgn_input.py, perfloss/ops/pgn_output.py), in fp32 as the references compute it.
// Only the CUDA kernels (csrc/cuda/pgn_input.cu, csrc/cuda/pgn_output.cu) use it: PGN has no CPU
// C++ kernel (on CPU the plain-PyTorch references run).
#pragma once

#include "host_device.h"

#include <math.h>

namespace perfloss {
namespace pgn_math {

// The input stage: a pixel value mapped by its channel's affine (range mapping and ImageNet
// normalisation, or the identity when those are folded into the first convolution).
PERFLOSS_HD float input_value(float v, float scale, float shift) { return v * scale + shift; }

// The sigmoid output: proxy = gain * sigmoid(out) + offset[c] ...
PERFLOSS_HD float sigmoid_proxy(float out, float gain, float offset) {
  return gain * (1.0f / (1.0f + expf(-out))) + offset;
}

// ... and the proxy gradient coef * (y_hat - proxy).
PERFLOSS_HD float proxy_grad(float y_hat, float proxy, float coef) { return coef * (y_hat - proxy); }

}  // namespace pgn_math
}  // namespace perfloss
