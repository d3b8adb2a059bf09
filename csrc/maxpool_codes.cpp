// perfloss::maxpool_codes / maxpool_unroute, CPU kernels: max pooling keeping each window's argmax as
// a packed 2/4/8-bit code (in the output's memory order: NCHW, or NHWC for channels_last), and the
// backward routing from those codes.
// Ties / NaN resolve as in ATen's CPU max_pool2d (first maximum in row-major window order, NaN wins).
// The per-element math is csrc/lean_math.h's, shared with the CUDA kernels (csrc/cuda/maxpool_codes.cu); the AVX2
// fp32 paths compute the same in vector form.
// See perfloss/ops/maxpool_codes.py for the contract; the reference there is the specification.
#include "lean_common.h"

#include <cstring>
#include <type_traits>
#include <vector>

namespace perfloss {
namespace lean {
namespace {

// The 2x2 / stride 2 / no padding window at output column ow of one output row, from input rows r0
// and r1 (both in bounds, 2 * ow + 1 < W): exactly the general loop's order and rule (first maximum
// in row-major order, a later NaN wins). Writes y[ow] and code[ow].
template <typename scalar_t>
inline void pool2x2_one(const scalar_t* r0, const scalar_t* r1, scalar_t* y, uint8_t* code, int64_t ow) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t v[4] = {static_cast<acc_t>(r0[2 * ow]), static_cast<acc_t>(r0[2 * ow + 1]),
                      static_cast<acc_t>(r1[2 * ow]), static_cast<acc_t>(r1[2 * ow + 1])};
  acc_t best = v[0];
  uint8_t k = 0;
  for (uint8_t j = 1; j < 4; ++j) {
    if (pool_takes(v[j], best)) {
      best = v[j];
      k = j;
    }
  }
  y[ow] = static_cast<scalar_t>(best);
  code[ow] = k;
}

#ifdef PERFLOSS_X86_SIMD
// pool2x2_one's ordered compare-and-select (greater or NaN) over 8 windows' four values a, b, c, d
// (row-major window order): each lane's maximum and its code (as floats 0..3).
__attribute__((target("avx2"))) inline void max4_avx2(__m256 a, __m256 b, __m256 c, __m256 d, __m256& best, __m256& k) {
  best = a;
  k = _mm256_setzero_ps();
  const __m256 position[3] = {_mm256_set1_ps(1.f), _mm256_set1_ps(2.f), _mm256_set1_ps(3.f)};
  const __m256 next[3] = {b, c, d};
  for (int j = 0; j < 3; ++j) {
    const __m256 m = _mm256_or_ps(_mm256_cmp_ps(next[j], best, _CMP_GT_OQ), _mm256_cmp_ps(next[j], next[j], _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, next[j], m);
    k = _mm256_blendv_ps(k, position[j], m);
  }
}

// 8 codes (int32 lanes 0..3) stored as 8 bytes.
__attribute__((target("avx2"))) inline void store_codes_avx2(__m256i k, uint8_t* code) {
  const __m128i k16 = _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(code), _mm_packus_epi16(k16, k16));
}

// fp32, 8 outputs per step: deinterleave the even / odd columns of both rows, then the same ordered
// compare-and-select as pool2x2_one (GT or NaN). Returns the first column it did not do.
__attribute__((target("avx2"))) int64_t pool2x2_row_f32_avx2(const float* r0, const float* r1, float* y,
                                                             uint8_t* code, int64_t ow, int64_t ow_end) {
  for (; ow + 8 <= ow_end; ow += 8) {
    const __m256 p0 = _mm256_loadu_ps(r0 + 2 * ow), p1 = _mm256_loadu_ps(r0 + 2 * ow + 8);
    const __m256 q0 = _mm256_loadu_ps(r1 + 2 * ow), q1 = _mm256_loadu_ps(r1 + 2 * ow + 8);
    // lanes in order 0 1 4 5 2 3 6 7 (fixed once at the end)
    const __m256 a = _mm256_shuffle_ps(p0, p1, 0x88), b = _mm256_shuffle_ps(p0, p1, 0xDD);
    const __m256 c = _mm256_shuffle_ps(q0, q1, 0x88), d = _mm256_shuffle_ps(q0, q1, 0xDD);
    __m256 best, k;
    max4_avx2(a, b, c, d, best, k);
    best = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(best), 0xD8));
    _mm256_storeu_ps(y + ow, best);
    store_codes_avx2(_mm256_permute4x64_epi64(_mm256_cvttps_epi32(k), 0xD8), code + ow);
  }
  return ow;
}

// fp32 windows of one output position in channels_last: the four window positions' channel runs
// p00, p01, p10, p11 (row-major window order), 8 channels per step. Returns the first channel it did
// not do.
__attribute__((target("avx2"))) int64_t pool2x2_channels_f32_avx2(const float* p00, const float* p01, const float* p10,
                                                                  const float* p11, float* y, uint8_t* code, int64_t C) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 best, k;
    max4_avx2(_mm256_loadu_ps(p00 + c), _mm256_loadu_ps(p01 + c), _mm256_loadu_ps(p10 + c), _mm256_loadu_ps(p11 + c),
              best, k);
    _mm256_storeu_ps(y + c, best);
    store_codes_avx2(_mm256_cvttps_epi32(k), code + c);
  }
  return c;
}

// The gradients g of 8 consecutive 2x2 windows (codes e .. e + 7 of the packed 2-bit codes cp) routed
// to the four window positions: a, b, c, d (row-major window order) hold 0 + g where the code points
// there (as zero-fill + add gives) and +0 elsewhere.
__attribute__((target("avx2"))) inline void route2x2_avx2(const uint8_t* cp, int64_t e, __m256 g, __m256& a, __m256& b,
                                                          __m256& c, __m256& d) {
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i three = _mm256_set1_epi32(3);
  const uint8_t* q = cp + (e >> 2);
  const int sh = static_cast<int>(e & 3) * 2;
  // bits [2e, 2e + 16): 2 bytes when aligned, else 3 (all inside the buffer: element e + 7 exists)
  uint32_t word = static_cast<uint32_t>(q[0]) | (static_cast<uint32_t>(q[1]) << 8);
  if (sh) word |= static_cast<uint32_t>(q[2]) << 16;
  word >>= sh;
  const __m256i code = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), three);
  const __m256 v = _mm256_add_ps(_mm256_setzero_ps(), g);
  a = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_setzero_si256())));
  b = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_set1_epi32(1))));
  c = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, _mm256_set1_epi32(2))));
  d = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(code, three)));
}

// fp32 un-routing of one output row of 2x2 / stride 2 windows (contiguous grad row): 8 windows per
// step, even / odd columns interleaved into the two input rows. Returns the first column it did not do.
__attribute__((target("avx2"))) int64_t unroute2x2_row_f32_avx2(const float* grow, const uint8_t* cp, int64_t e_row,
                                                                float* r0, float* r1, int64_t ow, int64_t ow_end) {
  for (; ow + 8 <= ow_end; ow += 8) {
    __m256 a, b, c, d;
    route2x2_avx2(cp, e_row + ow, _mm256_loadu_ps(grow + ow), a, b, c, d);
    const __m256 ablo = _mm256_unpacklo_ps(a, b), abhi = _mm256_unpackhi_ps(a, b);
    const __m256 cdlo = _mm256_unpacklo_ps(c, d), cdhi = _mm256_unpackhi_ps(c, d);
    _mm256_storeu_ps(r0 + 2 * ow, _mm256_permute2f128_ps(ablo, abhi, 0x20));
    _mm256_storeu_ps(r0 + 2 * ow + 8, _mm256_permute2f128_ps(ablo, abhi, 0x31));
    _mm256_storeu_ps(r1 + 2 * ow, _mm256_permute2f128_ps(cdlo, cdhi, 0x20));
    _mm256_storeu_ps(r1 + 2 * ow + 8, _mm256_permute2f128_ps(cdlo, cdhi, 0x31));
  }
  return ow;
}

// fp32 un-routing of one 2x2 / stride 2 window position in channels_last: its channels' gradients
// (contiguous, codes from e on) to the four input positions' channel runs p00, p01, p10, p11, 8 channels
// per step. Returns the first channel it did not do.
__attribute__((target("avx2"))) int64_t unroute2x2_channels_f32_avx2(const float* grun, const uint8_t* cp, int64_t e,
                                                                    float* p00, float* p01, float* p10, float* p11,
                                                                    int64_t C) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 a, b, cc, d;
    route2x2_avx2(cp, e + c, _mm256_loadu_ps(grun + c), a, b, cc, d);
    _mm256_storeu_ps(p00 + c, a);
    _mm256_storeu_ps(p01 + c, b);
    _mm256_storeu_ps(p10 + c, cc);
    _mm256_storeu_ps(p11 + c, d);
  }
  return c;
}
#endif


std::tuple<at::Tensor, at::Tensor> maxpool_codes_cpu(const at::Tensor& x, at::IntArrayRef kernel,
                                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, bool ceil_mode, int64_t keep) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "maxpool_codes: x must be a 4-D CPU tensor");
  const PoolGeometry g = pool_geometry(kernel, stride, padding, dilation, "maxpool_codes");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(keep >= 0 && keep <= B, "maxpool_codes: keep out of range");
  const int64_t OH = pool_out_size(H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  const int64_t OW = pool_out_size(W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  const int64_t bits = pool_code_bits(g.kh * g.kw);
  const int64_t per = 8 / bits;
  const bool cl = work_channels_last(x);
  at::Tensor y = at::empty({B, C, OH, OW}, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous));
  const int64_t n_keep = keep * C * OH * OW;
  const int64_t n_all = B * C * OH * OW;
  at::Tensor codes = at::empty({packed_bytes(n_keep, bits)}, x.options().dtype(at::kByte));
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2), xs3 = x.stride(3);
  const int64_t ys0 = y.stride(0), ys1 = y.stride(1), ys2 = y.stride(2), ys3 = y.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "maxpool_codes_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    uint8_t* cptr = codes.mutable_data_ptr<uint8_t>();
    // One output element (b, c, oh, ow): writes y, returns the window code.
    auto pool_one = [&](int64_t b, int64_t c, int64_t oh, int64_t ow) -> uint8_t {
      acc_t best;
      const unsigned code = pool_window(src + b * xs0 + c * xs1, xs2, xs3, H, W, g, oh, ow, best);
      dst[b * ys0 + c * ys1 + oh * ys2 + ow * ys3] = static_cast<scalar_t>(best);
      return static_cast<uint8_t>(code);
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
    // 2x2 / stride 2 / no padding / no dilation on a contiguous NCHW input (VGG's pools): one pass over
    // each pair of input rows, writing the output row and its codes (a row buffer), then packing.
    const bool fast2x2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.dh == 1 &&
                         g.dw == 1 && !cl && x.is_contiguous() && OW > 0;
    if (fast2x2) {
      const int64_t full_ow = W / 2;  // columns whose window lies inside the row
      // elements [e0, e1) of the flat NCHW output; codes packed into cptr (bytes of this range owned by
      // the caller) when cptr is not null
      auto run = [&](int64_t e0, int64_t e1, uint8_t* cp) {
        std::vector<uint8_t> rowcodes(OW);
        int64_t e = e0;
        while (e < e1) {
          const int64_t ow0 = e % OW;
          const int64_t row = e / OW;  // = plane * OH + oh
          const int64_t oh = row % OH, plane = row / OH;
          const int64_t ow1 = std::min(OW, ow0 + (e1 - e));
          scalar_t* yrow = dst + row * OW;
          uint8_t* crow = rowcodes.data();
          int64_t ow = ow0;
          if (2 * oh + 1 < H) {
            const scalar_t* r0 = src + (plane * H + 2 * oh) * W;
            const scalar_t* r1 = r0 + W;
            const int64_t fend = std::min(ow1, full_ow);
#ifdef PERFLOSS_X86_SIMD
            if (std::is_same_v<scalar_t, float>) {  // (not a template: the casts only run for float)
              if (use_avx2())
                ow = pool2x2_row_f32_avx2(reinterpret_cast<const float*>(r0), reinterpret_cast<const float*>(r1),
                                          reinterpret_cast<float*>(yrow), crow, ow, fend);
            }
#endif
            for (; ow < fend; ++ow) pool2x2_one(r0, r1, yrow, crow, ow);
          }
          for (; ow < ow1; ++ow) crow[ow] = pool_one(plane / C, plane % C, oh, ow);  // edge windows (ceil_mode)
          if (cp != nullptr) {
            for (int64_t j = ow0; j < ow1; ++j) {
              const int64_t ej = e + (j - ow0);
              cp[ej >> 2] |= static_cast<uint8_t>(crow[j] << ((ej & 3) * 2));
            }
          }
          e += ow1 - ow0;
        }
      };
      at::parallel_for(0, n_bytes, std::max<int64_t>(1, kGrain / 16), [&](int64_t b0, int64_t b1) {
        std::memset(cptr + b0, 0, b1 - b0);
        run(b0 * 4, std::min(b1 * 4, n_keep), cptr);
      });
      at::parallel_for(n_keep, n_all, kGrain, [&](int64_t e0, int64_t e1) { run(e0, e1, nullptr); });
      return;
    }
    if (cl) {
      // channels_last: walk the output in its memory order, a row (b, oh) at a time, channels innermost
      // (the NCHW walk below would stride by C through the input: 20x slower at VGG's first pool). A
      // window position holds C contiguous values, so a 2x2 / stride 2 window takes its channel run 8
      // at a time (AVX2, fp32); other windows and the edge go one by one. The codes of the kept rows go
      // unpacked, a byte each, into a buffer in that same order (n_keep bytes for the op's duration, a
      // quarter of fp32 y's kept rows), then are packed: rows need not end on a byte boundary.
      const bool window2x2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
                             g.dh == 1 && g.dw == 1 && xs1 == 1 && ys1 == 1;
      at::Tensor unpacked = at::empty({n_keep}, codes.options());
      uint8_t* u = unpacked.mutable_data_ptr<uint8_t>();
      at::parallel_for(0, B * OH, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, OW * C)), [&](int64_t r0, int64_t r1) {
        std::vector<uint8_t> unkept(OW * C);  // the codes of rows past the kept samples
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / OH, oh = r % OH;
          uint8_t* rowcodes = b < keep ? u + r * OW * C : unkept.data();
          const int64_t full_ow = window2x2 && 2 * oh + 1 < H ? std::min(OW, W / 2) : 0;
          for (int64_t ow = 0; ow < full_ow; ++ow) {
            const scalar_t* p00 = src + b * xs0 + 2 * oh * xs2 + 2 * ow * xs3;
            const scalar_t* p01 = p00 + xs3;
            const scalar_t* p10 = p00 + xs2;
            const scalar_t* p11 = p10 + xs3;
            scalar_t* yp = dst + b * ys0 + oh * ys2 + ow * ys3;
            uint8_t* kp = rowcodes + ow * C;
            int64_t c = 0;
#ifdef PERFLOSS_X86_SIMD
            if (std::is_same_v<scalar_t, float> && use_avx2())  // (casts only run for float)
              c = pool2x2_channels_f32_avx2(reinterpret_cast<const float*>(p00), reinterpret_cast<const float*>(p01),
                                            reinterpret_cast<const float*>(p10), reinterpret_cast<const float*>(p11),
                                            reinterpret_cast<float*>(yp), kp, C);
#endif
            for (; c < C; ++c) {  // pool2x2_one's rule, per channel
              const scalar_t row0[2] = {p00[c], p01[c]}, row1[2] = {p10[c], p11[c]};
              pool2x2_one(row0, row1, yp + c, kp + c, 0);
            }
          }
          for (int64_t ow = full_ow; ow < OW; ++ow)
            for (int64_t c = 0; c < C; ++c) rowcodes[ow * C + c] = pool_one(b, c, oh, ow);
        }
      });
      at::parallel_for(0, n_bytes, kGrain, [&](int64_t b0, int64_t b1) {
        for (int64_t byte = b0; byte < b1; ++byte) {
          uint8_t packed = 0;
          const int64_t e0 = byte * per, e1 = std::min(e0 + per, n_keep);
          for (int64_t e = e0; e < e1; ++e) packed |= static_cast<uint8_t>(u[e] << ((e - e0) * bits));
          cptr[byte] = packed;
        }
      });
      return;
    }
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

at::Tensor maxpool_unroute_cpu(const at::Tensor& grad, const at::Tensor& codes_in, at::IntArrayRef input_hw,
                                  at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  TORCH_CHECK(grad.device().is_cpu() && grad.dim() == 4, "maxpool_unroute: grad must be a 4-D CPU tensor");
  TORCH_CHECK(codes_in.scalar_type() == at::kByte, "maxpool_unroute: codes must be uint8");
  TORCH_CHECK(input_hw.size() == 2, "maxpool_unroute: input_hw must have 2 entries");
  const PoolGeometry g = pool_geometry(kernel, stride, padding, dilation, "maxpool_unroute");
  const int64_t B = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  const int64_t H = input_hw[0], W = input_hw[1];
  const int64_t bits = pool_code_bits(g.kh * g.kw);
  const at::Tensor codes = codes_in.contiguous();
  TORCH_CHECK(codes.numel() == packed_bytes(B * C * OH * OW, bits), "maxpool_unroute: codes size mismatch");
  const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1), gs2 = grad.stride(2), gs3 = grad.stride(3);
  // 2x2 / stride 2 / no padding / no dilation: the windows tile the input, so each covered 2x2 block is
  // written once (0 + g at the code's position, 0 elsewhere: the same values as zero-fill + add) with
  // no zero-fill pass; uncovered rows / columns are zeroed and ceil_mode edge windows added after.
  const bool fast2x2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.dh == 1 &&
                       g.dw == 1;
  const bool cl = work_channels_last(grad);  // the codes' order, and grad_in's layout
  const auto options = grad.options().memory_format(memory_format_of(cl));
  at::Tensor out = at::empty({B, C, H, W}, options);  // (at::zeros would drop the memory format)
  if (!fast2x2) out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "maxpool_unroute_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const uint8_t* cp = codes.const_data_ptr<uint8_t>();
    if (cl) {
      // channels_last: an input position holds a run of C channels, and so does an output position's
      // codes (the (b, oh, ow, c) order). One task per row of windows (b, oh): the 2x2 / stride 2 case
      // writes each covered run once as above, zeroes the uncovered columns of its rows and adds the
      // ceil_mode edge windows; any other window adds each gradient at its argmax over the zero-filled
      // output (overlapping windows: one task per sample, windows in (oh, ow) order, as the NCHW walk).
      const scalar_t zero = scalar_t(0);
      auto add_window = [&](int64_t b, int64_t oh, int64_t ow) {
        const int64_t e = ((b * OH + oh) * OW + ow) * C;
        for (int64_t c = 0; c < C; ++c) {
          int64_t ih, iw;
          pool_code_to_input(g, oh, ow, packed_code_at(cp, e + c, bits), ih, iw);
          op[((b * H + ih) * W + iw) * C + c] += gp[b * gs0 + c * gs1 + oh * gs2 + ow * gs3];
        }
      };
      if (!fast2x2) {
        at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            for (int64_t oh = 0; oh < OH; ++oh)
              for (int64_t ow = 0; ow < OW; ++ow) add_window(b, oh, ow);
        });
        return;
      }
      const int64_t cols_fast = std::min(OW, W / 2);
      at::parallel_for(0, B * OH, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, OW * C)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / OH, oh = r % OH;
          const int64_t rows = std::min<int64_t>(2, H - 2 * oh);  // the input rows this window row covers
          scalar_t* q0 = op + ((b * H + 2 * oh) * W) * C;
          scalar_t* q1 = q0 + W * C;
          const int64_t full = rows == 2 ? cols_fast : 0;
          for (int64_t ow = 0; ow < full; ++ow) {
            const scalar_t* grun = gp + b * gs0 + oh * gs2 + ow * gs3;
            scalar_t* p00 = q0 + 2 * ow * C;
            scalar_t* p10 = q1 + 2 * ow * C;
            const int64_t e = (r * OW + ow) * C;
            int64_t c = 0;
#ifdef PERFLOSS_X86_SIMD
            if (std::is_same_v<scalar_t, float> && gs1 == 1 && use_avx2())  // (casts only run for float)
              c = unroute2x2_channels_f32_avx2(reinterpret_cast<const float*>(grun), cp, e, reinterpret_cast<float*>(p00),
                                               reinterpret_cast<float*>(p00 + C), reinterpret_cast<float*>(p10),
                                               reinterpret_cast<float*>(p10 + C), C);
#endif
            for (; c < C; ++c) {
              const unsigned code = packed_code_at(cp, e + c, 2);
              const scalar_t v = static_cast<scalar_t>(acc_t(0) + static_cast<acc_t>(grun[c * gs1]));
              p00[c] = code == 0 ? v : zero;
              p00[C + c] = code == 1 ? v : zero;
              p10[c] = code == 2 ? v : zero;
              p10[C + c] = code == 3 ? v : zero;
            }
          }
          std::fill(q0 + 2 * full * C, q0 + W * C, zero);
          if (rows == 2) std::fill(q1 + 2 * full * C, q1 + W * C, zero);
          for (int64_t ow = full; ow < OW; ++ow) add_window(b, oh, ow);
        }
      });
      for (int64_t b = 0; b < B; ++b)  // rows no window covers (odd H without ceil_mode)
        std::fill(op + (b * H + std::min(H, 2 * OH)) * W * C, op + (b + 1) * H * W * C, zero);
      return;
    }
    at::parallel_for(0, B * C, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / C, c = p % C;
        scalar_t* plane = op + p * H * W;
        const scalar_t* gplane = gp + b * gs0 + c * gs1;
        int64_t rows_fast = 0, cols_fast = 0;
        if (fast2x2) {
          rows_fast = std::min(OH, H / 2);
          cols_fast = std::min(OW, W / 2);
          for (int64_t oh = 0; oh < rows_fast; ++oh) {
            scalar_t* r0 = plane + 2 * oh * W;
            scalar_t* r1 = r0 + W;
            const scalar_t* grow = gplane + oh * gs2;
            const int64_t e_row = (p * OH + oh) * OW;
            int64_t ow = 0;
#ifdef PERFLOSS_X86_SIMD
            if (std::is_same_v<scalar_t, float> && gs3 == 1 && use_avx2())  // (casts only run for float)
              ow = unroute2x2_row_f32_avx2(reinterpret_cast<const float*>(grow), cp, e_row, reinterpret_cast<float*>(r0),
                                           reinterpret_cast<float*>(r1), ow, cols_fast);
#endif
            for (; ow < cols_fast; ++ow) {
              const int64_t e = e_row + ow;
              const unsigned code = (cp[e >> 2] >> ((e & 3) * 2)) & 3u;
              const scalar_t v = static_cast<scalar_t>(acc_t(0) + static_cast<acc_t>(grow[ow * gs3]));
              const scalar_t z = scalar_t(0);
              r0[2 * ow] = code == 0 ? v : z;
              r0[2 * ow + 1] = code == 1 ? v : z;
              r1[2 * ow] = code == 2 ? v : z;
              r1[2 * ow + 1] = code == 3 ? v : z;
            }
            for (int64_t iw = 2 * cols_fast; iw < W; ++iw) r0[iw] = r1[iw] = scalar_t(0);
          }
          for (int64_t ih = 2 * rows_fast; ih < H; ++ih)
            for (int64_t iw = 0; iw < W; ++iw) plane[ih * W + iw] = scalar_t(0);
        }
        for (int64_t oh = 0; oh < OH; ++oh) {
          for (int64_t ow = (oh < rows_fast ? cols_fast : 0); ow < OW; ++ow) {
            int64_t ih, iw;
            pool_code_to_input(g, oh, ow, packed_code_at(cp, (p * OH + oh) * OW + ow, bits), ih, iw);
            plane[ih * W + iw] += gplane[oh * gs2 + ow * gs3];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(perfloss, CPU, m) {
  m.impl("maxpool_codes", &maxpool_codes_cpu);
  m.impl("maxpool_unroute", &maxpool_unroute_cpu);
}

}  // namespace lean
}  // namespace perfloss
