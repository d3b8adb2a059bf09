// perfloss::maxpool_codes_kernel / maxpool_unroute_kernel: max pooling keeping each window's argmax as
// a packed 2/4/8-bit code (NCHW order of the output), and the backward routing from those codes.
// Ties / NaN resolve as in ATen's CPU max_pool2d (first maximum in row-major window order, NaN wins).
// See perfloss/ops/maxpool_codes.py for the contract; the reference there is the specification.
#include "lean_common.h"

#include <cmath>
#include <limits>
#include <vector>

namespace perfloss {
namespace lean {
namespace {

int64_t code_bits(int64_t k) {
  if (k <= 4) return 2;
  if (k <= 16) return 4;
  TORCH_CHECK(k <= 256, "maxpool_codes: windows of more than 256 positions are not supported");
  return 8;
}

int64_t out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t eff = d * (k - 1) + 1;
  const int64_t num = size + 2 * p - eff;
  int64_t out = (num + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

struct Geometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

Geometry geometry(at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d) {
  TORCH_CHECK(k.size() == 2 && s.size() == 2 && p.size() == 2 && d.size() == 2,
              "maxpool_codes: kernel, stride, padding, dilation must have 2 entries each");
  return {k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]};
}

std::tuple<at::Tensor, at::Tensor> maxpool_codes_kernel(const at::Tensor& x, at::IntArrayRef kernel,
                                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, bool ceil_mode, int64_t keep) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "maxpool_codes_kernel: x must be a 4-D CPU tensor");
  const Geometry g = geometry(kernel, stride, padding, dilation);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(keep >= 0 && keep <= B, "maxpool_codes_kernel: keep out of range");
  const int64_t OH = out_size(H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  const int64_t OW = out_size(W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  const int64_t bits = code_bits(g.kh * g.kw);
  const int64_t per = 8 / bits;
  const bool cl = is_channels_last(x);
  at::Tensor y = at::empty({B, C, OH, OW}, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous));
  const int64_t n_keep = keep * C * OH * OW;
  const int64_t n_all = B * C * OH * OW;
  at::Tensor codes = at::empty({packed_bytes(n_keep, bits)}, x.options().dtype(at::kByte));
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2), xs3 = x.stride(3);
  const int64_t ys0 = y.stride(0), ys1 = y.stride(1), ys2 = y.stride(2), ys3 = y.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "maxpool_codes_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    uint8_t* cptr = codes.mutable_data_ptr<uint8_t>();
    // One output element (b, c, oh, ow): writes y, returns the window code.
    auto pool_one = [&](int64_t b, int64_t c, int64_t oh, int64_t ow) -> uint8_t {
      const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
      const scalar_t* plane = src + b * xs0 + c * xs1;
      acc_t best = -std::numeric_limits<acc_t>::infinity();
      int64_t code = -1;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = h0 + i * g.dh;
        if (ih < 0 || ih >= H) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = w0 + j * g.dw;
          if (iw < 0 || iw >= W) continue;
          const acc_t v = static_cast<acc_t>(plane[ih * xs2 + iw * xs3]);
          if (code < 0) code = i * g.kw + j;  // ATen starts from the first in-bounds position
          if (v > best || std::isnan(v)) {
            best = v;
            code = i * g.kw + j;
          }
        }
      }
      dst[b * ys0 + c * ys1 + oh * ys2 + ow * ys3] = static_cast<scalar_t>(best);
      return static_cast<uint8_t>(code < 0 ? 0 : code);
    };
    // Walk flat NCHW output indices [e0, e1) with incremental (b, c, oh, ow) counters.
    struct Cursor {
      int64_t b, c, oh, ow;
    };
    auto cursor_at = [&](int64_t e) {
      Cursor k;
      k.ow = e % OW;
      int64_t t = e / OW;
      k.oh = t % OH;
      t /= OH;
      k.c = t % C;
      k.b = t / C;
      return k;
    };
    auto advance = [&](Cursor& k) {
      if (++k.ow == OW) {
        k.ow = 0;
        if (++k.oh == OH) {
          k.oh = 0;
          if (++k.c == C) {
            k.c = 0;
            ++k.b;
          }
        }
      }
    };
    const int64_t n_bytes = packed_bytes(n_keep, bits);
    at::parallel_for(0, n_bytes, std::max<int64_t>(1, kGrain / 16), [&](int64_t b0, int64_t b1) {
      Cursor k = cursor_at(b0 * per);
      for (int64_t byte = b0; byte < b1; ++byte) {
        uint8_t packed = 0;
        const int64_t e0 = byte * per;
        const int64_t e1 = std::min(e0 + per, n_keep);
        for (int64_t e = e0; e < e1; ++e) {
          packed |= static_cast<uint8_t>(pool_one(k.b, k.c, k.oh, k.ow) << ((e - e0) * bits));
          advance(k);
        }
        cptr[byte] = packed;
      }
    });
    at::parallel_for(n_keep, n_all, kGrain, [&](int64_t e0, int64_t e1) {
      Cursor k = cursor_at(e0);
      for (int64_t e = e0; e < e1; ++e) {
        pool_one(k.b, k.c, k.oh, k.ow);
        advance(k);
      }
    });
  });
  return {y, codes};
}

at::Tensor maxpool_unroute_kernel(const at::Tensor& grad, const at::Tensor& codes_in, at::IntArrayRef input_hw,
                                  at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  TORCH_CHECK(grad.device().is_cpu() && grad.dim() == 4, "maxpool_unroute_kernel: grad must be a 4-D CPU tensor");
  TORCH_CHECK(codes_in.scalar_type() == at::kByte, "maxpool_unroute_kernel: codes must be uint8");
  TORCH_CHECK(input_hw.size() == 2, "maxpool_unroute_kernel: input_hw must have 2 entries");
  const Geometry g = geometry(kernel, stride, padding, dilation);
  const int64_t B = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  const int64_t H = input_hw[0], W = input_hw[1];
  const int64_t bits = code_bits(g.kh * g.kw);
  const int64_t per = 8 / bits;
  const uint8_t cmask = static_cast<uint8_t>((1u << bits) - 1u);
  const at::Tensor codes = codes_in.contiguous();
  TORCH_CHECK(codes.numel() == packed_bytes(B * C * OH * OW, bits), "maxpool_unroute_kernel: codes size mismatch");
  at::Tensor out = at::zeros({B, C, H, W}, grad.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "maxpool_unroute_kernel", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const uint8_t* cp = codes.const_data_ptr<uint8_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / C, c = p % C;
        scalar_t* plane = op + p * H * W;
        const scalar_t* gplane = gp + b * gs0 + c * gs1;
        for (int64_t oh = 0; oh < OH; ++oh) {
          for (int64_t ow = 0; ow < OW; ++ow) {
            const int64_t e = (p * OH + oh) * OW + ow;
            const int64_t code = (cp[e / per] >> ((e % per) * bits)) & cmask;
            const int64_t ih = oh * g.sh - g.ph + (code / g.kw) * g.dh;
            const int64_t iw = ow * g.sw - g.pw + (code % g.kw) * g.dw;
            plane[ih * W + iw] += gplane[oh * gs2 + ow * gs3];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(perfloss, m) {
  m.def("maxpool_codes_kernel(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, bool ceil_mode, "
        "int keep) -> (Tensor, Tensor)");
  m.def("maxpool_unroute_kernel(Tensor grad, Tensor codes, int[] input_hw, int[] kernel, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
}

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("maxpool_codes_kernel", &maxpool_codes_kernel);
  m.impl("maxpool_unroute_kernel", &maxpool_unroute_kernel);
}

}  // namespace lean
}  // namespace perfloss
