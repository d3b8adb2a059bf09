// perfloss::feature_distance on CUDA: the launcher the glue (feature_distance_ops.cpp) calls.
#pragma once

#include "cuda/loss_common.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace perfloss {
namespace cuda {

// Number of per-block partial sums launch_feature_distance needs in `partials` (accumulation type).
int64_t feature_distance_partials(int kind, bool channels_last, int64_t B, int64_t C, int64_t P);

// Per-sample values (B,) of distance `kind` (loss_math::DistanceKind) between f0 = a and f1 = b, both
// dense (B, C, P = H*W) in one layout (channels_last: channels innermost), and with `grad` non-null
// d(sum of values)/d f0 in that layout. `weight` (C values, lpips only, may be null), `partials` and
// `values` are in the accumulation type (float, double for kDouble).
void launch_feature_distance(ElemType t, int kind, bool channels_last, const void* a, const void* b, void* grad,
                             const void* weight, void* partials, void* values, int64_t B, int64_t C, int64_t P,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace perfloss
