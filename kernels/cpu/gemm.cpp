// BLIS-style GEMM. Each thread owns a rectangle of C and runs the blocked loops on it:
//   for each NC-wide column block: for each KC-deep K block: pack B[KC, NC] into scratch,
//   then for each MR-row strip of A: for each NR-wide panel of packed B: microkernel.
// A is not packed: the microkernels broadcast straight from its rows (as oneDNN's brgemm
// does), so an MR x KC strip of A sits in L1 while the packed B block streams from L2.
// This avoids a transposing copy of A per call. B is packed because the microkernel needs
// NR contiguous columns per k, which the [N,K] weight layout only gives after a transpose.
// A layer's weights can be packed once instead (gemm_pack_b, at planning): whole-K panels,
// panel p = columns [p NR, p NR + NR) as [K][NR], so the K block at k0 of the columns from jc
// starts at jc K + k0 NR. Packing per call cost 3-6% of a whole model at batch 1 (DeiT-Tiny,
// PVTv2-b0, 2 threads).
#include <algorithm>
#include <array>
#include <cstring>

#include "core/shift_codes.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"
#include "shiftadd/error.h"

namespace shiftadd::kernels::cpu {
namespace {

// Blocking for ~32 KiB L1d / >= 1 MiB L2 (Zen 4; tuned on the DeiT-Tiny shapes).
constexpr int64_t kKc = 192;  // K block depth: an MR x KC strip of A (10.5 KiB) stays in L1
constexpr int64_t kNc = 768;  // N block width: the packed KC x NC block of B (576 KiB) in L2
// Rows per residual copy, only for a GELU epilogue whose residual is C itself with K > KC.
constexpr int64_t kMcResidual = 64;
constexpr int64_t kMaxMr = 14;  // the most rows a microkernel takes (AVX-512: kMr512)
// Below this much work per extra thread (~35 us on one Zen 4 core), waking a pool worker
// (tens of us through a condition variable on a busy machine) costs more than it saves.
constexpr double kMinFlopsPerThread = 4e6;

// The MR x NR tile a microkernel computes, and what to do with it. Row r of the tile is stored
// at C + row(r) * ldc with row(r) = crow ? crow[r] : r (likewise the residual with rrow).
struct Tile {
  float* C;  // at the tile's first column: of its first row, or of row 0 when crow is set
  const int32_t* crow;
  int64_t ldc;
  int64_t rows, cols;  // valid part of the tile (<= MR, <= NR)
  float alpha;
  const float* scale;  // per-column multiplier at the tile's first column, or null
  bool accumulate;  // C += alpha * acc (later K blocks, or residual == C) instead of C = ...
  // Epilogue, set on the final K block only.
  const float* bias;  // at the tile's first column, or null
  Combine combine;
  bool gelu;
  const float* residual;  // at the tile's first column (first row, or row 0 with rrow), or null
  const int32_t* rrow;
  int64_t ldr;
  float* c_row(int r) const { return C + (crow ? crow[r] : r) * ldc; }
  const float* res_row(int r) const { return residual ? residual + (rrow ? rrow[r] : r) * ldr : nullptr; }
};

using Microkernel = void (*)(int64_t kc, const float* A, int64_t lda, const float* Bp,
                             const Tile& t);
// Packs B[k0:k0+kc, n0:n0+nc] (logical [K,N]) as NR-wide panels, each [kc][NR], zero-padded.
using PackB = void (*)(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                       float* Bp);

struct Arch {
  int64_t mr, nr;
  const Microkernel* kernels;  // kernels[rows - 1] handles a strip of `rows` rows
  PackB pack_b;
};

// ----- packing -----------------------------------------------------------------------------

template <int NR>
void pack_b_kn(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* Bp) {
  for (int64_t p = 0; p < nc; p += NR, Bp += kc * NR) {
    const int64_t w = std::min<int64_t>(NR, nc - p);
    const float* src = a.B + k0 * a.ldb + n0 + p;
    for (int64_t k = 0; k < kc; ++k) {
      float* dst = Bp + k * NR;
      if (w == NR) {
        std::memcpy(dst, src + k * a.ldb, NR * sizeof(float));
      } else {
        std::memcpy(dst, src + k * a.ldb, w * sizeof(float));
        std::fill(dst + w, dst + NR, 0.0f);
      }
    }
  }
}

// Copies one row of an [N,K] panel (one column n of B) into its lane of the packed panel.
template <int NR>
void pack_column(const float* src, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k) dst[k * NR] = src[k];
}

template <int NR>
void pack_b_nk_scalar(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                      float* Bp) {
  for (int64_t p = 0; p < nc; p += NR, Bp += kc * NR) {
    const int64_t w = std::min<int64_t>(NR, nc - p);
    for (int64_t j = 0; j < w; ++j) pack_column<NR>(a.B + (n0 + p + j) * a.ldb + k0, kc, Bp + j);
    for (int64_t k = 0; k < kc; ++k) std::fill(Bp + k * NR + w, Bp + (k + 1) * NR, 0.0f);
  }
}

// Shift codes -> their fp32 weights (exact powers of two), one table for every packing path.
struct CodeTable {
  alignas(64) float w[32];
  CodeTable() {
    for (int c = 0; c < 32; ++c) w[c] = decode_shift_weight(static_cast<uint8_t>(c));
  }
};
const CodeTable kCodes;

// Decodes `rows` rows of kc codes (row stride ld) into dst [rows][kc].
void decode_codes_scalar(const uint8_t* codes, int64_t ld, int64_t rows, int64_t kc, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < kc; ++k) dst[r * kc + k] = kCodes.w[codes[r * ld + k] & 31];
}

template <int NR>
void pack_b_codes_scalar(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* Bp) {
  for (int64_t p = 0; p < nc; p += NR, Bp += kc * NR) {
    const int64_t w = std::min<int64_t>(NR, nc - p);
    for (int64_t j = 0; j < w; ++j) {
      const uint8_t* src = a.B_codes + (n0 + p + j) * a.ldb + k0;
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = kCodes.w[src[k] & 31];
    }
    for (int64_t k = 0; k < kc; ++k) std::fill(Bp + k * NR + w, Bp + (k + 1) * NR, 0.0f);
  }
}

template <int NR>
void pack_b_scalar(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* Bp) {
  if (a.B_codes)
    pack_b_codes_scalar<NR>(a, k0, kc, n0, nc, Bp);
  else if (a.b_is_nk)
    pack_b_nk_scalar<NR>(a, k0, kc, n0, nc, Bp);
  else
    pack_b_kn<NR>(a, k0, kc, n0, nc, Bp);
}

#if SHIFTADD_X86
// Transposes 8 rows of kc floats (row stride ld) into lanes j..j+7 of a packed [kc][NR] panel,
// 8 x 8 at a time in registers.
template <int NR>
SHIFTADD_AVX2 void transpose8_into_panel(const float* s, int64_t ld, int64_t kc, float* Bp) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    const __m256 r0 = _mm256_loadu_ps(s + 0 * ld + k), r1 = _mm256_loadu_ps(s + 1 * ld + k);
    const __m256 r2 = _mm256_loadu_ps(s + 2 * ld + k), r3 = _mm256_loadu_ps(s + 3 * ld + k);
    const __m256 r4 = _mm256_loadu_ps(s + 4 * ld + k), r5 = _mm256_loadu_ps(s + 5 * ld + k);
    const __m256 r6 = _mm256_loadu_ps(s + 6 * ld + k), r7 = _mm256_loadu_ps(s + 7 * ld + k);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    float* d = Bp + k * NR;
    _mm256_storeu_ps(d + 0 * NR, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + 1 * NR, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * NR, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * NR, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * NR, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * NR, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * NR, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * NR, _mm256_permute2f128_ps(u3, u7, 0x31));
  }
  for (; k < kc; ++k)
    for (int64_t r = 0; r < 8; ++r) Bp[k * NR + r] = s[r * ld + k];
}

// Decodes 8 rows of kc shift codes into floats [8][kc] (a 32-entry table lookup per code).
SHIFTADD_AVX2 void decode8_codes_avx2(const uint8_t* codes, int64_t ld, int64_t kc, float* dst) {
  const __m256 lo = _mm256_load_ps(kCodes.w), mid = _mm256_load_ps(kCodes.w + 8);
  const __m256 hi = _mm256_load_ps(kCodes.w + 16), top = _mm256_load_ps(kCodes.w + 24);
  for (int64_t r = 0; r < 8; ++r) {
    const uint8_t* src = codes + r * ld;
    float* d = dst + r * kc;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      int64_t w;
      std::memcpy(&w, src + k, 8);
      const __m256i c = _mm256_and_si256(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(w)), _mm256_set1_epi32(31));
      // Two 8-entry permutes per 16-entry half, blended on bit 3, then on bit 4.
      const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, c), _mm256_permutevar8x32_ps(mid, c),
                                        _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
      const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(hi, c), _mm256_permutevar8x32_ps(top, c),
                                        _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
      _mm256_storeu_ps(d + k, _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(c, 27))));
    }
    for (; k < kc; ++k) d[k] = kCodes.w[src[k] & 31];
  }
}

// [N,K] panels (floats, or shift codes decoded 8 rows at a time) transposed 8 rows x 8 k at a time.
template <int NR>
SHIFTADD_AVX2 void pack_b_nk_avx2(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                                  float* Bp) {
  alignas(64) float decoded[8 * kKc];
  for (int64_t p = 0; p < nc; p += NR, Bp += kc * NR) {
    const int64_t w = std::min<int64_t>(NR, nc - p);
    int64_t j = 0;
    for (; j + 8 <= w; j += 8) {
      if (a.B_codes) {
        decode8_codes_avx2(a.B_codes + (n0 + p + j) * a.ldb + k0, a.ldb, kc, decoded);
        transpose8_into_panel<NR>(decoded, kc, kc, Bp + j);
      } else {
        transpose8_into_panel<NR>(a.B + (n0 + p + j) * a.ldb + k0, a.ldb, kc, Bp + j);
      }
    }
    for (; j < w; ++j) {
      if (a.B_codes) {
        decode_codes_scalar(a.B_codes + (n0 + p + j) * a.ldb + k0, a.ldb, 1, kc, decoded);
        pack_column<NR>(decoded, kc, Bp + j);
      } else {
        pack_column<NR>(a.B + (n0 + p + j) * a.ldb + k0, kc, Bp + j);
      }
    }
    if (w < NR)
      for (int64_t k = 0; k < kc; ++k) std::fill(Bp + k * NR + w, Bp + (k + 1) * NR, 0.0f);
  }
}

template <int NR>
void pack_b_avx2(const GemmArgs& a, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* Bp) {
  if (a.b_is_nk || a.B_codes)
    pack_b_nk_avx2<NR>(a, k0, kc, n0, nc, Bp);
  else
    pack_b_kn<NR>(a, k0, kc, n0, nc, Bp);
}

// ----- AVX-512 microkernel: 14 x 32 (28 zmm accumulators, 2 for B, broadcasts from memory) --

constexpr int kMr512 = 14, kNr512 = 32;
static_assert(kMr512 <= kMaxMr);

SHIFTADD_AVX512 inline void store512(float* c, const float* scale, const float* bias, const float* res,
                                     __m512 acc, __mmask16 m, const Tile& t) {
  __m512 mul = _mm512_set1_ps(t.alpha);
  if (scale) mul = _mm512_mul_ps(mul, _mm512_maskz_loadu_ps(m, scale));
  __m512 v = _mm512_mul_ps(acc, mul);
  if (t.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, c));
  if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias));
  if (t.combine != Combine::None) v = combine512(v, t.combine);
  if (t.gelu) v = gelu512(v);
  if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res));
  _mm512_mask_storeu_ps(c, m, v);
}

template <int R>
SHIFTADD_AVX512 void kernel_avx512(int64_t kc, const float* A, int64_t lda, const float* Bp,
                                   const Tile& t) {
  __m512 c0[R], c1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(Bp + k * kNr512);
    const __m512 b1 = _mm512_load_ps(Bp + k * kNr512 + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(A[r * lda + k]);
      c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
    }
  }
  const __mmask16 m0 = mask16(t.cols), m1 = mask16(t.cols - 16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    float* c = t.c_row(r);
    const float* res = t.res_row(r);
    store512(c, t.scale, t.bias, res, c0[r], m0, t);
    if (m1)
      store512(c + 16, t.scale ? t.scale + 16 : nullptr, t.bias ? t.bias + 16 : nullptr,
               res ? res + 16 : nullptr, c1[r], m1, t);
  }
}

// ----- AVX2 microkernel: 6 x 16 (12 ymm accumulators) ----------------------------------------

constexpr int kMr256 = 6, kNr256 = 16;

// Full vectors (the common case) avoid VMASKMOVPS, whose stores AMD runs in microcode.
SHIFTADD_AVX2 inline void store256(float* c, const float* scale, const float* bias, const float* res,
                                   __m256 acc, int64_t cols, const Tile& t) {
  __m256 mul = _mm256_set1_ps(t.alpha);
  if (scale)
    mul = _mm256_mul_ps(mul, cols >= 8 ? _mm256_loadu_ps(scale) : _mm256_maskload_ps(scale, mask256(cols)));
  __m256 v = _mm256_mul_ps(acc, mul);
  if (cols >= 8) {
    if (t.accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(c));
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    if (t.combine != Combine::None) v = combine256(v, t.combine);
    if (t.gelu) v = gelu256(v);
    if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res));
    _mm256_storeu_ps(c, v);
    return;
  }
  const __m256i m = mask256(cols);
  if (t.accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(c, m));
  if (bias) v = _mm256_add_ps(v, _mm256_maskload_ps(bias, m));
  if (t.combine != Combine::None) v = combine256(v, t.combine);
  if (t.gelu) v = gelu256(v);
  if (res) v = _mm256_add_ps(v, _mm256_maskload_ps(res, m));
  _mm256_maskstore_ps(c, m, v);
}

template <int R>
SHIFTADD_AVX2 void kernel_avx2(int64_t kc, const float* A, int64_t lda, const float* Bp,
                               const Tile& t) {
  __m256 c0[R], c1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
#pragma GCC unroll 2  // measured ~1.5% faster on Zen 4; more unrolling did not help
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(Bp + k * kNr256);
    const __m256 b1 = _mm256_load_ps(Bp + k * kNr256 + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(A + r * lda + k);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* c = t.c_row(r);
    const float* res = t.res_row(r);
    store256(c, t.scale, t.bias, res, c0[r], t.cols, t);
    if (t.cols > 8)
      store256(c + 8, t.scale ? t.scale + 8 : nullptr, t.bias ? t.bias + 8 : nullptr,
               res ? res + 8 : nullptr, c1[r], t.cols - 8, t);
  }
}

#endif  // SHIFTADD_X86

// ----- portable microkernel: 4 x 16, left to the compiler's auto-vectorizer ------------------

constexpr int kMrScalar = 4, kNrScalar = 16;

template <int R>
void kernel_scalar(int64_t kc, const float* A, int64_t lda, const float* Bp, const Tile& t) {
  float acc[R][kNrScalar] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int r = 0; r < R; ++r) {
      const float av = A[r * lda + k];
      for (int j = 0; j < kNrScalar; ++j) acc[r][j] += av * Bp[k * kNrScalar + j];
    }
  }
  for (int r = 0; r < R; ++r) {
    float* c = t.c_row(r);
    const float* res = t.res_row(r);
    for (int64_t j = 0; j < t.cols; ++j) {
      float v = acc[r][j] * (t.scale ? t.alpha * t.scale[j] : t.alpha);
      if (t.accumulate) v += c[j];
      if (t.bias) v += t.bias[j];
      v = combine_value(v, t.combine);
      if (t.gelu) v = gelu_scalar(v);
      if (res) v += res[j];
      c[j] = v;
    }
  }
}

const Arch& current_arch() {
#if SHIFTADD_X86
  static constexpr auto k512 = row_kernels<Microkernel, kMr512>([]<int R>() { return &kernel_avx512<R>; });
  static constexpr auto k256 = row_kernels<Microkernel, kMr256>([]<int R>() { return &kernel_avx2<R>; });
  static const Arch avx512{kMr512, kNr512, k512.data(), pack_b_avx2<kNr512>};
  static const Arch avx2{kMr256, kNr256, k256.data(), pack_b_avx2<kNr256>};
#endif
  static constexpr auto ks = row_kernels<Microkernel, kMrScalar>([]<int R>() { return &kernel_scalar<R>; });
  static const Arch scalar{kMrScalar, kNrScalar, ks.data(), pack_b_scalar<kNrScalar>};
  switch (isa()) {
#if SHIFTADD_X86
    case Isa::Avx512:
      return avx512;
    case Isa::Avx2:
      return avx2;
#endif
    default:
      return scalar;
  }
}

// ----- the blocked loops ---------------------------------------------------------------------

// Rows [m0, m1) x columns [jc, jc + nc) against one packed K block, the panel of column jc + j
// at Bp + j * b_col (b_col = kc for a block packed per call, K for prepacked panels). `res`
// (used on the last K block) is the residual at column jc: with res_rows, of row 0, logical row
// i being row res_rows[i]; without, of row m0, rows contiguous with stride ldr.
void macro_kernel(const GemmArgs& a, const Arch& arch, int64_t m0, int64_t m1, int64_t jc,
                  int64_t nc, int64_t k0, int64_t kc, const float* Bp, int64_t b_col, bool accumulate, bool last,
                  const float* res, const int32_t* res_rows, int64_t ldr, float* a_strip) {
  Tile t;
  t.ldc = a.ldc;
  t.alpha = a.alpha;
  t.accumulate = accumulate;
  t.gelu = last && a.epi.gelu;
  t.combine = last ? a.epi.combine : Combine::None;
  t.ldr = ldr;
  for (int64_t i = m0; i < m1; i += arch.mr) {
    t.rows = std::min(arch.mr, m1 - i);
    t.crow = a.c_rows ? a.c_rows + i : nullptr;
    t.rrow = res_rows ? res_rows + i : nullptr;
    const Microkernel kernel = arch.kernels[t.rows - 1];
    const float* A = a.A + i * a.lda + k0;
    int64_t lda = a.lda;
    if (a.a_rows) {  // the strip's rows gathered into L1, once for all its column tiles
      for (int64_t r = 0; r < t.rows; ++r)
        std::memcpy(a_strip + r * kc, a.A + a.a_rows[i + r] * a.lda + k0, sizeof(float) * kc);
      A = a_strip, lda = kc;
    }
    for (int64_t j = 0; j < nc; j += arch.nr) {
      t.C = a.C + (a.c_rows ? 0 : i * a.ldc) + jc + j;
      t.cols = std::min(arch.nr, nc - j);
      t.scale = a.epi.scale ? a.epi.scale + jc + j : nullptr;
      t.bias = last && a.epi.bias ? a.epi.bias + jc + j : nullptr;
      t.residual = !last || !res ? nullptr : res_rows ? res + j : res + (i - m0) * ldr + j;
      kernel(kc, A, lda, Bp + j * b_col, t);
    }
  }
}

// The whole GEMM restricted to C[m0:m1, n0:n1], on one thread.
void gemm_rect(const GemmArgs& a, const Arch& arch, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
               float* scratch) {
  float* Bp = scratch;
  float* res_copy = scratch + kKc * kNc;
  float* a_strip = res_copy + kMcResidual * kNc;
  // Equal K blocks (e.g. 768 -> 3 x 256, 300 -> 2 x 152) rather than a short tail block.
  const int64_t nkb = std::max<int64_t>(1, (a.K + kKc - 1) / kKc);
  const int64_t kstep = (a.K + nkb - 1) / nkb;
  // residual == C: without GELU, accumulate onto C from the first K block (C += AB + bias).
  // With GELU and several K blocks, C holds partial sums, so the residual is copied first.
  // (Likewise with a combine: both must see AB + bias without the residual.)
  const bool in_place = a.epi.residual == a.C;
  const bool nonlinear = a.epi.gelu || a.epi.combine != Combine::None;
  const bool accumulate_onto_c = in_place && !nonlinear;
  const bool copy_residual = in_place && nonlinear && nkb > 1;
  const float* residual = accumulate_onto_c ? nullptr : a.epi.residual;
  // B's K block at k0 for columns [jc, jc + nc): the prepacked panels when they were packed for
  // this arch's panel width, else packed now into scratch.
  const bool prepacked = a.B_packed && a.B_packed_nr == arch.nr;
  auto b_block = [&](int64_t k0, int64_t kc, int64_t jc, int64_t nc) -> const float* {
    if (prepacked) return a.B_packed + jc * a.K + k0 * arch.nr;
    arch.pack_b(a, k0, kc, jc, nc, Bp);
    return Bp;
  };
  auto b_col = [&](int64_t kc) { return prepacked ? a.K : kc; };

  for (int64_t jc = n0; jc < n1; jc += kNc) {
    const int64_t nc = std::min(kNc, n1 - jc);
    if (!copy_residual) {
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kstep, kc = std::min(kstep, a.K - k0);
        const float* res = !residual ? nullptr : a.c_rows ? residual + jc : residual + m0 * a.epi.ldr + jc;
        macro_kernel(a, arch, m0, m1, jc, nc, k0, kc, b_block(k0, kc, jc, nc), b_col(kc), kb > 0 || accumulate_onto_c,
                     kb == nkb - 1, res, a.c_rows, a.epi.ldr, a_strip);
      }
      continue;
    }
    for (int64_t ic = m0; ic < m1; ic += kMcResidual) {
      const int64_t mc = std::min(kMcResidual, m1 - ic);
      for (int64_t i = 0; i < mc; ++i) {
        const int64_t row = a.c_rows ? a.c_rows[ic + i] : ic + i;
        std::memcpy(res_copy + i * nc, residual + row * a.epi.ldr + jc, nc * sizeof(float));
      }
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kstep, kc = std::min(kstep, a.K - k0);
        macro_kernel(a, arch, ic, ic + mc, jc, nc, k0, kc, b_block(k0, kc, jc, nc), b_col(kc), kb > 0,
                     kb == nkb - 1, res_copy, nullptr, nc, a_strip);
      }
    }
  }
}

void check(const GemmArgs& a) {
  if (a.M < 0 || a.N < 0 || a.K < 0) throw Error("gemm: negative size");
  if (a.epi.residual == a.C && a.epi.ldr != a.ldc)
    throw Error("gemm: residual aliases C with a different row stride");
  if (a.B_codes && !a.b_is_nk) throw Error("gemm: shift-code B must be stored [N, K]");
}

}  // namespace

int64_t gemm_panel_width() { return current_arch().nr; }

int64_t gemm_packed_b_floats(const GemmArgs& a) {
  const int64_t nr = gemm_panel_width();
  return (a.N + nr - 1) / nr * nr * a.K;
}

int64_t gemm_pack_b(const GemmArgs& a, float* dst) {
  if (a.N < 0 || a.K < 0) throw Error("gemm_pack_b: negative size");
  if (a.B_codes && !a.b_is_nk) throw Error("gemm_pack_b: shift-code B must be stored [N, K]");
  const Arch& arch = current_arch();
  // One panel and at most kKc of K at a time (the packers' decode buffers hold kKc), each at its
  // place in the whole-K panel.
  for (int64_t n0 = 0; n0 < a.N; n0 += arch.nr)
    for (int64_t k0 = 0; k0 < a.K; k0 += kKc)
      arch.pack_b(a, k0, std::min(kKc, a.K - k0), n0, std::min(arch.nr, a.N - n0),
                  dst + n0 * a.K + k0 * arch.nr);
  return arch.nr;
}

size_t gemm_scratch_bytes() {
  return static_cast<size_t>(kKc * kNc + kMcResidual * kNc + kMaxMr * kKc) * sizeof(float);
}

void gemm_serial(const GemmArgs& a, float* scratch) {
  check(a);
  if (a.M == 0 || a.N == 0) return;
  gemm_rect(a, current_arch(), 0, a.M, 0, a.N, scratch);
}

void gemm(const GemmArgs& a, ThreadPool& pool) {
  check(a);
  if (a.M == 0 || a.N == 0) return;
  if (pool.scratch_bytes() < gemm_scratch_bytes())
    throw Error("gemm: thread pool scratch not reserved (need gemm_scratch_bytes())");
  const Arch& arch = current_arch();
  const double flops = 2.0 * a.M * a.N * std::max<int64_t>(a.K, 1);
  const int64_t threads =
      std::clamp<int64_t>(static_cast<int64_t>(flops / kMinFlopsPerThread), 1, pool.size());
  // Split C into tm x tn rectangles of whole MR x NR tiles, minimizing the most tiles any
  // thread gets; on ties prefer splitting N (each thread then packs only its slice of B).
  const int64_t mb = (a.M + arch.mr - 1) / arch.mr, nb = (a.N + arch.nr - 1) / arch.nr;
  int64_t tm = 1, tn = 1, best = mb * nb;
  for (int64_t n_split = std::min(threads, nb); n_split >= 1; --n_split) {
    const int64_t m_split = std::min(threads / n_split, mb);
    const int64_t cost = ((mb + m_split - 1) / m_split) * ((nb + n_split - 1) / n_split);
    if (cost < best) best = cost, tm = m_split, tn = n_split;
  }
  if (tm * tn == 1) {
    gemm_rect(a, arch, 0, a.M, 0, a.N, pool.scratch(0));
    return;
  }
  pool.parallel_for(tm * tn, [&](int tid, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t im = r / tn, in = r % tn;
      const int64_t m0 = std::min(a.M, mb * im / tm * arch.mr);
      const int64_t m1 = std::min(a.M, mb * (im + 1) / tm * arch.mr);
      const int64_t n0 = std::min(a.N, nb * in / tn * arch.nr);
      const int64_t n1 = std::min(a.N, nb * (in + 1) / tn * arch.nr);
      if (m0 < m1 && n0 < n1) gemm_rect(a, arch, m0, m1, n0, n1, pool.scratch(tid));
    }
  });
}

}  // namespace shiftadd::kernels::cpu
