// Shift-code packing and shift linear (spec section 3) on the CPU.
//
// Both modes quantize a block of up to 4 activation rows to Q16.16 integers in the thread's
// scratch, then for each weight row decode 8 (exact, int64 lanes) or 16 (fast, int32 lanes)
// codes at once and apply them to all rows of the block: a variable shift, a conditional
// negation and a masked add per weight and row; no multiplications.
#include <algorithm>

#include "engine/shift_codes.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::cpu {
namespace {

constexpr int kRows = 4;     // activation rows per block
constexpr int64_t kNTile = 64;  // weight rows per task
constexpr int32_t kFastSat = 1 << 27;

// out[r] = exact sum_k g_k * (X[r][k] << (14 + s_k)), r < R
template <int R>
void dot_exact_scalar(const int32_t* X, int64_t ldX, const uint8_t* w, int64_t K, int64_t* out) {
  for (int r = 0; r < R; ++r) {
    int64_t acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t c = w[k];
      if (shift_code_is_zero(c)) continue;
      const int64_t t = static_cast<int64_t>(X[r * ldX + k]) << shift_code_lshift(c);
      acc += (c & kShiftSignBit) ? -t : t;
    }
    out[r] = acc;
  }
}

// out[r] = sum_k g_k * (X[r][k] >> -s_k), X already saturated to +-2^27
template <int R>
void dot_fast_scalar(const int32_t* X, int64_t ldX, const uint8_t* w, int64_t K, int64_t* out) {
  for (int r = 0; r < R; ++r) {
    int64_t acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t c = w[k];
      if (shift_code_is_zero(c)) continue;
      const int32_t t = X[r * ldX + k] >> ((c & kShiftExpMask) - 1);
      acc += (c & kShiftSignBit) ? -t : t;
    }
    out[r] = acc;
  }
}

#if SHIFTADD_X86
template <int R>
SHIFTADD_AVX512 void dot_exact_avx512(const int32_t* X, int64_t ldX, const uint8_t* w, int64_t K,
                                      int64_t* out) {
  const __m512i c15 = _mm512_set1_epi64(15), c16 = _mm512_set1_epi64(16), zero = _mm512_setzero_si512();
  __m512i acc[R];
  for (int r = 0; r < R; ++r) acc[r] = zero;
  for (int64_t k = 0; k < K; k += 8) {
    const __mmask8 km = K - k >= 8 ? 0xFF : static_cast<__mmask8>((1u << (K - k)) - 1);
    const __m512i c = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(km, w + k));
    const __m512i sh = _mm512_sub_epi64(c15, _mm512_and_si512(c, c15));
    const __mmask8 nz = _mm512_test_epi64_mask(c, c15);
    const __mmask8 neg = _mm512_test_epi64_mask(c, c16);
    for (int r = 0; r < R; ++r) {
      const __m512i x = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(km, X + r * ldX + k));
      __m512i t = _mm512_sllv_epi64(x, sh);
      t = _mm512_mask_sub_epi64(t, neg, zero, t);
      acc[r] = _mm512_mask_add_epi64(acc[r], nz, acc[r], t);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_epi64(acc[r]);
}

template <int R>
SHIFTADD_AVX512 void dot_fast_avx512(const int32_t* X, int64_t ldX, const uint8_t* w, int64_t K,
                                     int64_t* out) {
  const __m512i c15 = _mm512_set1_epi32(15), c16 = _mm512_set1_epi32(16), one = _mm512_set1_epi32(1);
  const __m512i zero = _mm512_setzero_si512();
  __m512i acc[R], acc32[R];
  for (int r = 0; r < R; ++r) acc[r] = acc32[r] = zero;
  int it = 0;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 km = mask16(K - k);
    const __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(km, w + k));
    const __m512i sh = _mm512_sub_epi32(_mm512_and_si512(c, c15), one);
    const __mmask16 nz = _mm512_test_epi32_mask(c, c15);
    const __mmask16 neg = _mm512_test_epi32_mask(c, c16);
    for (int r = 0; r < R; ++r) {
      __m512i t = _mm512_srav_epi32(_mm512_maskz_loadu_epi32(km, X + r * ldX + k), sh);
      t = _mm512_mask_sub_epi32(t, neg, zero, t);
      acc32[r] = _mm512_mask_add_epi32(acc32[r], nz, acc32[r], t);
    }
    if (++it == 8) {  // |8 terms| <= 2^30: widen before int32 could overflow
      it = 0;
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_add_epi64(acc[r], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc32[r])));
        acc[r] = _mm512_add_epi64(acc[r], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc32[r], 1)));
        acc32[r] = zero;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm512_add_epi64(acc[r], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc32[r])));
    acc[r] = _mm512_add_epi64(acc[r], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc32[r], 1)));
    out[r] = _mm512_reduce_add_epi64(acc[r]);
  }
}

SHIFTADD_AVX2 inline int64_t hsum_epi64_avx2(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

template <int R>
SHIFTADD_AVX2 void dot_exact_avx2(const int32_t* X, int64_t ldX, const uint8_t* w, int64_t K,
                                  int64_t* out) {
  const __m256i c15 = _mm256_set1_epi64x(15), c16 = _mm256_set1_epi64x(16);
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[R];
  for (int r = 0; r < R; ++r) acc[r] = zero;
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    int32_t cw;
    __builtin_memcpy(&cw, w + k, 4);
    const __m256i c = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(cw));
    const __m256i lo = _mm256_and_si256(c, c15);
    const __m256i sh = _mm256_sub_epi64(c15, lo);
    const __m256i isz = _mm256_cmpeq_epi64(lo, zero);
    const __m256i neg = _mm256_cmpeq_epi64(_mm256_and_si256(c, c16), c16);
    for (int r = 0; r < R; ++r) {
      const __m256i x = _mm256_cvtepi32_epi64(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(X + r * ldX + k)));
      __m256i t = _mm256_sllv_epi64(x, sh);
      t = _mm256_sub_epi64(_mm256_xor_si256(t, neg), neg);
      acc[r] = _mm256_add_epi64(acc[r], _mm256_andnot_si256(isz, t));
    }
  }
  int64_t tail[R];
  dot_exact_scalar<R>(X + k, ldX, w + k, K - k, tail);
  for (int r = 0; r < R; ++r) out[r] = hsum_epi64_avx2(acc[r]) + tail[r];
}

template <int R>
SHIFTADD_AVX2 void dot_fast_avx2(const int32_t* X, int64_t ldX, const uint8_t* w, int64_t K,
                                 int64_t* out) {
  const __m256i c15 = _mm256_set1_epi32(15), c16 = _mm256_set1_epi32(16), one = _mm256_set1_epi32(1);
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[R], acc32[R];
  for (int r = 0; r < R; ++r) acc[r] = acc32[r] = zero;
  int it = 0;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    int64_t cw;
    __builtin_memcpy(&cw, w + k, 8);
    const __m256i c = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(cw));
    const __m256i lo = _mm256_and_si256(c, c15);
    const __m256i sh = _mm256_sub_epi32(lo, one);
    const __m256i isz = _mm256_cmpeq_epi32(lo, zero);
    const __m256i neg = _mm256_cmpeq_epi32(_mm256_and_si256(c, c16), c16);
    for (int r = 0; r < R; ++r) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(X + r * ldX + k));
      __m256i t = _mm256_srav_epi32(x, sh);
      t = _mm256_sub_epi32(_mm256_xor_si256(t, neg), neg);
      acc32[r] = _mm256_add_epi32(acc32[r], _mm256_andnot_si256(isz, t));
    }
    if (++it == 8) {
      it = 0;
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_add_epi64(acc[r], _mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc32[r])));
        acc[r] = _mm256_add_epi64(acc[r], _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc32[r], 1)));
        acc32[r] = zero;
      }
    }
  }
  int64_t tail[R];
  dot_fast_scalar<R>(X + k, ldX, w + k, K - k, tail);
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_add_epi64(acc[r], _mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc32[r])));
    acc[r] = _mm256_add_epi64(acc[r], _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc32[r], 1)));
    out[r] = hsum_epi64_avx2(acc[r]) + tail[r];
  }
}
#endif

using DotFn = void (*)(const int32_t*, int64_t, const uint8_t*, int64_t, int64_t*);

template <int R>
DotFn pick_dot(bool exact) {
#if SHIFTADD_X86
  switch (isa()) {
    case Isa::Avx512:
      return exact ? dot_exact_avx512<R> : dot_fast_avx512<R>;
    case Isa::Avx2:
      return exact ? dot_exact_avx2<R> : dot_fast_avx2<R>;
    case Isa::Scalar:
      break;
  }
#endif
  return exact ? dot_exact_scalar<R> : dot_fast_scalar<R>;
}

int64_t padded_k(int64_t K) { return (K + 15) / 16 * 16; }

}  // namespace

size_t shift_linear_scratch_bytes(const ShiftLinearArgs& a) {
  return static_cast<size_t>(kRows * padded_k(a.K)) * sizeof(int32_t);
}

void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes,
                      ThreadPool& pool) {
  parallel_chunks(pool, n, 1, 65536, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) codes[i] = pack_shift_weight(shift[i], sign[i]);
  });
}

void shift_linear(const ShiftLinearArgs& a, ThreadPool& pool) {
  if (a.M <= 0 || a.N <= 0) return;
  const bool exact = a.mode == ShiftMode::Exact;
  const DotFn dots[kRows] = {pick_dot<1>(exact), pick_dot<2>(exact), pick_dot<3>(exact),
                             pick_dot<4>(exact)};
  const int64_t ldX = padded_k(a.K);
  const int64_t mblocks = (a.M + kRows - 1) / kRows, ntiles = (a.N + kNTile - 1) / kNTile;
  auto task = [&](int tid, int64_t t) {
    const int64_t m0 = (t / ntiles) * kRows, n0 = (t % ntiles) * kNTile;
    const int rows = static_cast<int>(std::min<int64_t>(kRows, a.M - m0));
    const int64_t n1 = std::min(a.N, n0 + kNTile);
    int32_t* X = reinterpret_cast<int32_t*>(pool.scratch(tid));
    for (int r = 0; r < rows; ++r) {
      const float* x = a.x + (m0 + r) * a.ldx;
      int32_t* xr = X + r * ldX;
      if (exact)
        for (int64_t k = 0; k < a.K; ++k) xr[k] = quantize_q16(x[k]);
      else
        for (int64_t k = 0; k < a.K; ++k)
          xr[k] = std::clamp(quantize_q16(x[k]), -kFastSat, kFastSat);
    }
    int64_t acc[kRows];
    for (int64_t n = n0; n < n1; ++n) {
      dots[rows - 1](X, ldX, a.codes + n * a.ldw, a.K, acc);
      const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
      for (int r = 0; r < rows; ++r) {
        float* y = a.y + (m0 + r) * a.ldy + n;
        if (exact)
          *y = static_cast<float>(acc[r] + B * (int64_t{1} << 14)) * 0x1p-30f;
        else
          *y = static_cast<float>(acc[r] + B) * 0x1p-16f;
      }
    }
  };
  const int64_t tasks = mblocks * ntiles;
  if (tasks == 1 || pool.size() == 1 || a.M * a.N * a.K < 32768) {
    for (int64_t t = 0; t < tasks; ++t) task(0, t);
  } else {
    pool.parallel_tasks(tasks, task);
  }
}

}  // namespace shiftadd::kernels::cpu
