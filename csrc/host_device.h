// PERFLOSS_HD marks the per-element math that the CPU kernels (csrc/*.cpp, compiled by the host
// compiler) and the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc) share, so the CPU tests exercise the
// arithmetic the GPU runs. Headers that use it hold no torch types: plain scalars and pointers only.
#pragma once

#ifdef __CUDACC__
#define PERFLOSS_HD __host__ __device__ __forceinline__
#else
#define PERFLOSS_HD inline
#endif
