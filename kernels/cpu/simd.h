#pragma once
// Internal to the CPU kernels: run-time SIMD selection, the vector math (exp, erf, GELU) they
// share, and the single-threaded GEMM that attention and conv2d call inside their own tasks.
// The build assumes no ISA beyond baseline x86-64 (or none at all elsewhere): AVX2 / AVX-512
// code is compiled per function with target attributes and chosen at run time.
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "kernels/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define SHIFTADD_X86 1
// GCC 12 warns that _mm512_undefined_ps() is (maybe) used uninitialized wherever
// _mm512_min_ps and friends inline (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define SHIFTADD_AVX2 __attribute__((target("avx2,fma")))
#define SHIFTADD_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))
#else
#define SHIFTADD_X86 0
#endif

namespace shiftadd::kernels {
struct ShiftLinearArgs;
}

namespace shiftadd::kernels::cpu {

enum class Isa { Scalar, Avx2, Avx512 };

// The path in use: the best this CPU supports unless set_simd() restricted it.
Isa isa();
// On the AVX-512 path: whether the int8 kernels use AVX-512 VNNI (vpdpbusd).
bool isa_vnni();

// Scalar exact-erf GELU (std::erf), used by the scalar path and for vector tails.
inline float gelu_scalar(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

#if SHIFTADD_X86

// erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 beyond). A rational fit (as used by
// Eigen and XLA) with max abs error ~4e-7 over the real line, ~1e-7 typically.
#define SHIFTADD_ERF_COEFFS                                                  \
  constexpr float p13 = -2.72614225801306e-10f, p11 = 2.77068142495902e-08f, \
                  p9 = -2.10102402082508e-06f, p7 = -5.69250639462346e-05f,  \
                  p5 = -7.34990630326855e-04f, p3 = -2.95459980854025e-03f,  \
                  p1 = -1.60960333262415e-02f;                               \
  constexpr float q8 = -1.45660718464996e-05f, q6 = -2.13374055278905e-04f,  \
                  q4 = -1.68282697438203e-03f, q2 = -7.37332916720468e-03f,  \
                  q0 = -1.42647390514189e-02f

SHIFTADD_AVX512 inline __m512 erf512(__m512 x) {
  SHIFTADD_ERF_COEFFS;
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0f)), _mm512_set1_ps(4.0f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(p13), x2, _mm512_set1_ps(p11));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(p9));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(p7));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(p5));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(p3));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(p1));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(q8), x2, _mm512_set1_ps(q6));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(q4));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(q2));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(q0));
  // x p / q with a reciprocal estimate and one Newton step (~1 ulp, no division: GELU sits in
  // the GEMM epilogues, where a divider bound loop would dominate small-K layers).
  __m512 r = _mm512_rcp14_ps(q);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
  return _mm512_mul_ps(_mm512_mul_ps(x, p), r);
}

SHIFTADD_AVX512 inline __m512 gelu512(__m512 x) {
  const __m512 e = erf512(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x),
                       _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// exp(x) for x <= 0 (softmax): Cephes range reduction + degree-6 polynomial, ~1 ulp.
// Inputs below -87.3 are clamped (result ~1e-38 instead of a denormal or 0).
SHIFTADD_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Natural log for positive normal x (Cephes logf: mantissa in [sqrt(1/2), sqrt(2)), degree-9
// polynomial), ~1 ulp.
#define SHIFTADD_LOG_COEFFS                                                                        \
  constexpr float l8 = 7.0376836292E-2f, l7 = -1.1514610310E-1f, l6 = 1.1676998740E-1f,             \
                  l5 = -1.2420140846E-1f, l4 = 1.4249322787E-1f, l3 = -1.6668057665E-1f,            \
                  l2 = 2.0000714765E-1f, l1 = -2.4999993993E-1f, l0 = 3.3333331174E-1f

SHIFTADD_AVX512 inline __m512 log512(__m512 x) {
  SHIFTADD_LOG_COEFFS;
  __m512 e = _mm512_getexp_ps(x);
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0f));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(l8), f, _mm512_set1_ps(l7));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l6));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l5));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l4));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l3));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l2));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l1));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(l0));
  y = _mm512_mul_ps(_mm512_mul_ps(y, f), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

// The MoE combine (kernels.h Combine) on 16 lanes: LogExp with the vector exp and log (~1 ulp
// each) for |y| <= 80, the rare lanes outside (floor, +inf, NaN) by the scalar formula.
SHIFTADD_AVX512 inline __m512 combine512(__m512 v, Combine c) {
  if (c == Combine::Limits) {
    // max_ps(floor, v) returns v when v is NaN: NaN stays NaN.
    v = _mm512_max_ps(_mm512_set1_ps(kCombineFloor), v);
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_set1_ps(kCombineMax), _CMP_GT_OQ),
                              _mm512_set1_ps(INFINITY));
  }
  if (c != Combine::LogExp) return v;
  const __m512 r = log512(_mm512_add_ps(exp512(v), _mm512_set1_ps(kCombineEps)));
  const __mmask16 far = ~_mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(80.0f), _CMP_LE_OQ);
  if (!far) return r;
  alignas(64) float in[16], out[16];
  _mm512_store_ps(in, v);
  _mm512_store_ps(out, r);
  for (int k = 0; k < 16; ++k)
    if (far >> k & 1) out[k] = combine_value(in[k], c);
  return _mm512_load_ps(out);
}

// Lane mask for the first n lanes (all 16 when n >= 16, none when n <= 0).
SHIFTADD_AVX512 inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? 0xFFFF : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

SHIFTADD_AVX512 inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }
SHIFTADD_AVX512 inline float hmax512(__m512 v) { return _mm512_reduce_max_ps(v); }

SHIFTADD_AVX2 inline __m256 erf256(__m256 x) {
  SHIFTADD_ERF_COEFFS;
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(p13), x2, _mm256_set1_ps(p11));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(p9));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(p7));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(p5));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(p3));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(p1));
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(q8), x2, _mm256_set1_ps(q6));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(q4));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(q2));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(q0));
  return _mm256_div_ps(_mm256_mul_ps(x, p), q);
}

SHIFTADD_AVX2 inline __m256 gelu256(__m256 x) {
  const __m256 e = erf256(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f)));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x),
                       _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

SHIFTADD_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n through the exponent field; n is in [-126, 128) after the clamp (x <= 0 in softmax).
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

SHIFTADD_AVX2 inline __m256 log256(__m256 x) {
  SHIFTADD_LOG_COEFFS;
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                                 _mm256_set1_epi32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_add_ps(e, _mm256_and_ps(big, _mm256_set1_ps(1.0f)));
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(l8), f, _mm256_set1_ps(l7));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l6));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l5));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l4));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l3));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l2));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l1));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(l0));
  y = _mm256_mul_ps(_mm256_mul_ps(y, f), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(f, y));
}

SHIFTADD_AVX2 inline __m256 combine256(__m256 v, Combine c) {
  if (c == Combine::Limits) {
    v = _mm256_max_ps(_mm256_set1_ps(kCombineFloor), v);
    return _mm256_blendv_ps(v, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(v, _mm256_set1_ps(kCombineMax), _CMP_GT_OQ));
  }
  if (c != Combine::LogExp) return v;
  const __m256 r = log256(_mm256_add_ps(exp256(v), _mm256_set1_ps(kCombineEps)));
  const __m256 abs = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
  const int far = ~_mm256_movemask_ps(_mm256_cmp_ps(abs, _mm256_set1_ps(80.0f), _CMP_LE_OQ)) & 0xFF;
  if (!far) return r;
  alignas(32) float in[8], out[8];
  _mm256_store_ps(in, v);
  _mm256_store_ps(out, r);
  for (int k = 0; k < 8; ++k)
    if (far >> k & 1) out[k] = combine_value(in[k], c);
  return _mm256_load_ps(out);
}

SHIFTADD_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

SHIFTADD_AVX2 inline float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lane mask for the first n (0..8) lanes, for _mm256_maskload_ps/_mm256_maskstore_ps.
SHIFTADD_AVX2 inline __m256i mask256(int64_t n) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                0,  0,  0,  0,  0,  0,  0,  0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
}

#undef SHIFTADD_ERF_COEFFS
#undef SHIFTADD_LOG_COEFFS
#endif  // SHIFTADD_X86

// The table {f.template operator()<1>(), ..., f.template operator()<MR>()}: a micro-kernel per
// row count, from a template lambda []<int R>() { return &kernel<R>; }.
template <class Kernel, int MR, class F>
constexpr std::array<Kernel, MR> row_kernels(F f) {
  return [&]<size_t... I>(std::index_sequence<I...>) {
    return std::array<Kernel, MR>{f.template operator()<static_cast<int>(I) + 1>()...};
  }(std::make_index_sequence<MR>{});
}

// Single-threaded GEMM on one thread's scratch (gemm_scratch_bytes() of it), for kernels
// that run GEMMs inside their own parallel tasks (attention, conv2d).
void gemm_serial(const GemmArgs& a, float* scratch);
// Fast-mode shift linear over all of a.M rows and columns [n0, n1) (on 32-column panel
// boundaries; n1 may be N) on one thread's scratch (shift_linear_scratch_bytes(a) of it), for
// the fused MoE linear's tasks.
void shift_linear_fast_serial(const ShiftLinearArgs& a, std::byte* scratch, int64_t n0, int64_t n1);

}  // namespace shiftadd::kernels::cpu
