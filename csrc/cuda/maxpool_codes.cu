// perfloss::maxpool_codes / maxpool_unroute, CUDA kernels. The window scan, the code packing and the
// code -> input mapping are csrc/lean_math.h's, the same the CPU kernels run.
#include "cuda/launch.cuh"
#include "cuda/maxpool_codes.cuh"

namespace perfloss {
namespace lean {
namespace {

// (b, c, h, w) of element e of an (n, c, h, w) tensor's memory order: NCHW, or NHWC for channels_last.
__device__ inline void unflatten(int64_t e, int64_t C, int64_t H, int64_t W, bool channels_last, int64_t& b,
                                 int64_t& c, int64_t& h, int64_t& w) {
  if (channels_last) {
    c = e % C;
    w = (e / C) % W;
    h = (e / (C * W)) % H;
    b = e / (C * W * H);
  } else {
    w = e % W;
    h = (e / W) % H;
    c = (e / (W * H)) % C;
    b = e / (W * H * C);
  }
}

// The inverse of unflatten: element (b, c, h, w)'s index in the memory order.
__device__ inline int64_t flatten(int64_t b, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W,
                                  bool channels_last) {
  return channels_last ? ((b * H + h) * W + w) * C + c : ((b * C + c) * H + h) * W + w;
}

// One thread per code byte: its 8 / bits consecutive outputs (in y's memory order, so that the
// threads of a warp read neighbouring inputs in either layout), so no two threads write one byte.
// Outputs past n_keep are pooled without a code.
template <typename T, typename A>
__global__ void maxpool_codes_kernel(const T* x, Dims4 xd, T* y, Dims4 yd, bool channels_last, uint8_t* codes,
                                     int64_t n_keep, int64_t bits, PoolGeometry g) {
  const int64_t per = 8 / bits;
  const int64_t n_out = yd.n * yd.c * yd.h * yd.w;
  const int64_t groups = (n_out + per - 1) / per;
  for (int64_t q = cuda::first_item(); q < groups; q += cuda::item_stride()) {
    const int64_t e0 = q * per;
    const int64_t e1 = e0 + per < n_out ? e0 + per : n_out;
    unsigned packed = 0;
    for (int64_t e = e0; e < e1; ++e) {
      int64_t b, c, oh, ow;
      unflatten(e, yd.c, yd.h, yd.w, channels_last, b, c, oh, ow);
      A best;
      const unsigned code = pool_window(x + b * xd.s0 + c * xd.s1, xd.s2, xd.s3, xd.h, xd.w, g, oh, ow, best);
      y[b * yd.s0 + c * yd.s1 + oh * yd.s2 + ow * yd.s3] = cast_to<T>(best);
      if (e < n_keep) packed |= code << ((e - e0) * bits);
    }
    if (e0 < n_keep) codes[q] = static_cast<uint8_t>(packed);
  }
}

// One thread per input element (in grad_in's memory order, which is the codes'), no atomics: it
// visits the windows that can hold it with oh, then ow, ascending (the CPU kernel's accumulation
// order) and adds the gradient of each whose code points at it, in A from +0 (as zero-fill + add
// gives; one rounding at the end).
template <typename T, typename A>
__global__ void maxpool_unroute_kernel(const T* grad, Dims4 gd, bool channels_last, const uint8_t* codes,
                                       int64_t bits, T* grad_in, int64_t H, int64_t W, PoolGeometry g) {
  const int64_t n_in = gd.n * gd.c * H * W;
  for (int64_t e = cuda::first_item(); e < n_in; e += cuda::item_stride()) {
    int64_t b, c, ih, iw;
    unflatten(e, gd.c, H, W, channels_last, b, c, ih, iw);
    A acc = A(0);
    for (int64_t i = g.kh - 1; i >= 0; --i) {  // descending i: ascending oh
      const int64_t th = ih + g.ph - i * g.dh;
      if (th < 0 || th % g.sh != 0 || th / g.sh >= gd.h) continue;
      const int64_t oh = th / g.sh;
      for (int64_t j = g.kw - 1; j >= 0; --j) {
        const int64_t tw = iw + g.pw - j * g.dw;
        if (tw < 0 || tw % g.sw != 0 || tw / g.sw >= gd.w) continue;
        const int64_t ow = tw / g.sw;
        if (packed_code_at(codes, flatten(b, c, oh, ow, gd.c, gd.h, gd.w, channels_last), bits) == i * g.kw + j)
          acc += cast_to<A>(grad[b * gd.s0 + c * gd.s1 + oh * gd.s2 + ow * gd.s3]);
      }
    }
    grad_in[e] = cast_to<T>(acc);
  }
}

}  // namespace

void launch_maxpool_codes(cuda::ElemType t, const void* x, Dims4 x_dims, void* y, Dims4 y_dims, bool channels_last,
                          uint8_t* codes, int64_t n_keep, int64_t bits, PoolGeometry g, cudaStream_t stream) {
  const int64_t groups = (y_dims.n * y_dims.c * y_dims.h * y_dims.w + 8 / bits - 1) / (8 / bits);
  if (groups == 0) return;
  cuda::dispatch_elem(t, [&](auto element) {
    using T = decltype(element);
    maxpool_codes_kernel<T, opmath_t<T>><<<cuda::grid_for_items(groups), cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(x), x_dims, static_cast<T*>(y), y_dims, channels_last, codes, n_keep, bits, g);
  });
}

void launch_maxpool_unroute(cuda::ElemType t, const void* grad, Dims4 grad_dims, bool channels_last, const uint8_t* codes,
                            int64_t bits, void* grad_in, int64_t H, int64_t W, PoolGeometry g, cudaStream_t stream) {
  const int64_t n_in = grad_dims.n * grad_dims.c * H * W;
  if (n_in == 0) return;
  cuda::dispatch_elem(t, [&](auto element) {
    using T = decltype(element);
    maxpool_unroute_kernel<T, opmath_t<T>><<<cuda::grid_for_items(n_in), cuda::kThreads, 0, stream>>>(
        static_cast<const T*>(grad), grad_dims, channels_last, codes, bits, static_cast<T*>(grad_in), H, W, g);
  });
}

}  // namespace lean
}  // namespace perfloss
