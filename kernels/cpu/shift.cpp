// Shift-code packing and shift linear (spec section 3) on the CPU.
//
// Fast mode runs on the integer dot-product units. A power-of-two weight g * 2^s is an exact
// small integer once its row's exponent is factored out, so each layer's codes are prepared
// once as int8 panels (pack_shift_panel). Per call, each task quantizes a block of activation
// rows to u8 (int8 + 128) in its scratch and runs register-blocked micro-kernels over the panels:
// AVX-512 VNNI (vpdpbusd: four u8 x s8 products per int32 lane per instruction), AVX-512BW or
// AVX2 (vpmaddubsw + vpmaddwd; |w| <= 64 keeps its int16 pair sums exact), or plain C. The u8
// offset is removed with the panel's column sums: sum (xq + 128) w = acc + 128 colsum.
//
// Exact mode is upstream's computation, an fp32 GEMM of q(x) against the weights: q(x) is
// materialised once (gathering MoE rows on the way) and cpu::gemm decodes the codes while it
// packs B, so it runs at the dense GEMM's speed.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "core/shift_codes.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/shift_kernels.h"
#include "shiftadd/error.h"

#if SHIFTADD_X86
#define SHIFTADD_VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,fma")))
#endif

namespace shiftadd::kernels::cpu {
namespace {

constexpr int64_t kCols = kShiftPanelCols;        // 32 output columns per panel
constexpr int64_t kDepth = kShiftPanelDepth;      // 4 k per int32 lane
constexpr int64_t kGroupBytes = kCols * kDepth;   // one k group of a panel: 128 bytes
constexpr int64_t kBlockBytes = 96 * 1024;        // a task's u8 activation block (L2)
constexpr int64_t kMaxBlockRows = 128;
constexpr int kMaxMr = 14;
constexpr double kMinMacsPerThread = 1 << 17;     // below: one thread (waking one costs more)

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
int64_t k_groups(int64_t K) { return (K + kDepth - 1) / kDepth; }
// Row stride of a quantized activation block: whole k groups, rows 64-byte aligned.
int64_t block_lda(int64_t K) { return round_up(k_groups(K) * kDepth, 64); }
int64_t block_rows(int64_t K) {
  return std::clamp<int64_t>(kBlockBytes / block_lda(K), kMaxMr, kMaxBlockRows);
}

// One micro-kernel call: R rows x one 32-column panel, then the fast-mode epilogue.
struct I8Tile {
  const uint8_t* A;  // R rows of u8 activations, row stride lda
  int64_t lda;
  const int8_t* B;  // the panel: [kg][32][4]
  int64_t kg;
  int64_t cols;                // valid columns (<= 32)
  const int32_t* colsum;       // at the panel's first column
  const float* ws;             // row scale * output scale, at the panel's first column
  const float* bq;             // q(bias) * output scale, at the panel's first column
  const float* step;           // per row: the activation step amax / 127
  Combine combine;
  bool gelu;
  float* const* y;             // per row, at the panel's first column
  const float* const* res;     // per row, at the panel's first column; or null
};
using I8Kernel = void (*)(const I8Tile&);

struct I8Arch {
  int mr;
  const I8Kernel* kernels;  // kernels[R - 1] computes R rows
};

// ----- plain C -------------------------------------------------------------------------------

inline float fast_epilogue(int32_t acc_u8, int32_t colsum, float step, float ws, float bq) {
  return std::fma(static_cast<float>(acc_u8 - 128 * colsum), step * ws, bq);
}

template <int R>
void i8_kernel_scalar(const I8Tile& t) {
  int32_t acc[R][kCols] = {};
  for (int64_t g = 0; g < t.kg; ++g) {
    const int8_t* b = t.B + g * kGroupBytes;
    for (int r = 0; r < R; ++r) {
      const uint8_t* a = t.A + r * t.lda + g * kDepth;
      for (int64_t j = 0; j < kCols; ++j)
        acc[r][j] += a[0] * b[4 * j] + a[1] * b[4 * j + 1] + a[2] * b[4 * j + 2] + a[3] * b[4 * j + 3];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < t.cols; ++j) {
      float y = fast_epilogue(acc[r][j], t.colsum[j], t.step[r], t.ws[j], t.bq[j]);
      y = combine_value(y, t.combine);
      if (t.gelu) y = gelu_scalar(y);
      if (t.res) y += t.res[r][j];
      t.y[r][j] = y;
    }
}

void quantize_rows_scalar(const float* const* x, int64_t rows, int64_t K, int64_t lda, uint8_t* A,
                          float* step) {
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) amax = std::fabs(x[r][k]) > amax ? std::fabs(x[r][k]) : amax;
    const float inv = int8_quant_inv(amax);
    step[r] = int8_quant_step(amax);
    uint8_t* a = A + r * lda;
    for (int64_t k = 0; k < K; ++k) a[k] = static_cast<uint8_t>(quantize_int8(x[r][k], inv) + 128);
    std::fill(a + K, a + lda, uint8_t{128});
  }
}

// q(x) of `rows` rows into dst [rows, K] (row r of the source at x[r]).
void q16_rows_scalar(const float* const* x, int64_t rows, int64_t K, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) dst[r * K + k] = quantize_q16_float(x[r][k]);
}

#if SHIFTADD_X86
// ----- AVX-512 ---------------------------------------------------------------------------------

// A tile half's per-column epilogue constants, loaded once for all its rows.
struct Cols512 {
  __mmask16 m;
  __m512 ws, bq;
};

SHIFTADD_AVX512 inline Cols512 cols512(const I8Tile& t, int64_t c0) {
  Cols512 c;
  c.m = mask16(t.cols - c0);
  c.ws = _mm512_maskz_loadu_ps(c.m, t.ws + c0);
  c.bq = _mm512_maskz_loadu_ps(c.m, t.bq + c0);
  return c;
}

// The accumulators' initial value for columns c0..c0+15: -128 * colsum removes the u8 offset.
SHIFTADD_AVX512 inline __m512i neg_comp512(const I8Tile& t, int64_t c0) {
  const __m512i colsum = _mm512_maskz_loadu_epi32(mask16(t.cols - c0), t.colsum + c0);
  return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(colsum, 7));
}

SHIFTADD_AVX512 inline void i8_store512(__m512i acc, int r, int64_t c0, const Cols512& c, const I8Tile& t) {
  if (!c.m) return;
  const __m512 v = _mm512_cvtepi32_ps(acc);  // acc started at -128 colsum
  __m512 y = _mm512_fmadd_ps(v, _mm512_mul_ps(_mm512_set1_ps(t.step[r]), c.ws), c.bq);
  if (t.combine != Combine::None) y = combine512(y, t.combine);
  if (t.gelu) y = gelu512(y);
  if (t.res) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(c.m, t.res[r] + c0));
  _mm512_mask_storeu_ps(t.y[r] + c0, c.m, y);
}

SHIFTADD_AVX512 inline __m512i broadcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <int R>
SHIFTADD_VNNI void i8_kernel_vnni(const I8Tile& t) {
  const __m512i init0 = neg_comp512(t, 0), init1 = neg_comp512(t, 16);
  __m512i c0[R], c1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) c0[r] = init0, c1[r] = init1;
  const int8_t* B = t.B;
  for (int64_t g = 0; g < t.kg; ++g, B += kGroupBytes) {
    const __m512i b0 = _mm512_loadu_si512(B), b1 = _mm512_loadu_si512(B + 64);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i a = broadcast4(t.A + r * t.lda + g * kDepth);
      c0[r] = _mm512_dpbusd_epi32(c0[r], a, b0);
      c1[r] = _mm512_dpbusd_epi32(c1[r], a, b1);
    }
  }
  const Cols512 lo = cols512(t, 0), hi = cols512(t, 16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    i8_store512(c0[r], r, 0, lo, t);
    i8_store512(c1[r], r, 16, hi, t);
  }
}

template <int R>
SHIFTADD_AVX512 void i8_kernel_avx512bw(const I8Tile& t) {
  const __m512i ones = _mm512_set1_epi16(1);
  const __m512i init0 = neg_comp512(t, 0), init1 = neg_comp512(t, 16);
  __m512i c0[R], c1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) c0[r] = init0, c1[r] = init1;
  const int8_t* B = t.B;
  for (int64_t g = 0; g < t.kg; ++g, B += kGroupBytes) {
    const __m512i b0 = _mm512_loadu_si512(B), b1 = _mm512_loadu_si512(B + 64);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i a = broadcast4(t.A + r * t.lda + g * kDepth);
      c0[r] = _mm512_add_epi32(c0[r], _mm512_madd_epi16(_mm512_maddubs_epi16(a, b0), ones));
      c1[r] = _mm512_add_epi32(c1[r], _mm512_madd_epi16(_mm512_maddubs_epi16(a, b1), ones));
    }
  }
  const Cols512 lo = cols512(t, 0), hi = cols512(t, 16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    i8_store512(c0[r], r, 0, lo, t);
    i8_store512(c1[r], r, 16, hi, t);
  }
}

SHIFTADD_AVX512 void quantize_rows_avx512(const float* const* x, int64_t rows, int64_t K, int64_t lda,
                                          uint8_t* A, float* step) {
  const __m512 c127 = _mm512_set1_ps(127.0f), cm127 = _mm512_set1_ps(-127.0f);
  const __m512i c128 = _mm512_set1_epi32(128);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x[r];
    // max_ps returns its second operand when the first is NaN: NaN inputs do not count.
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16)
      vmax = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(mask16(K - k), xr + k)), vmax);
    const float amax = _mm512_reduce_max_ps(vmax);
    const __m512 inv = _mm512_set1_ps(int8_quant_inv(amax));
    step[r] = int8_quant_step(amax);
    uint8_t* a = A + r * lda;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = mask16(K - k);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + k), inv);
      v = _mm512_max_ps(_mm512_min_ps(v, c127), cm127);  // as quantize_int8: NaN -> 127
      const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), c128);
      _mm_mask_storeu_epi8(a + k, m, _mm512_cvtepi32_epi8(q));
    }
    std::fill(a + K, a + lda, uint8_t{128});
  }
}

SHIFTADD_AVX512 void q16_rows_avx512(const float* const* x, int64_t rows, int64_t K, float* dst) {
  const __m512 lo = _mm512_set1_ps(kQ16Min), hi = _mm512_set1_ps(kQ16Max);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = mask16(K - k);
      __m512 f = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x[r] + k), _mm512_set1_ps(65536.0f)),
                                      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
      f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
      f = _mm512_mask_mov_ps(f, nan, _mm512_setzero_ps());  // as quantize_q16: NaN -> 0
      _mm512_mask_storeu_ps(dst + r * K + k, m, _mm512_mul_ps(f, _mm512_set1_ps(0x1p-16f)));
    }
}

// ----- AVX2 ------------------------------------------------------------------------------------

SHIFTADD_AVX2 inline void i8_store256(__m256i acc, int r, int64_t c0, const I8Tile& t) {
  const int64_t n = std::min<int64_t>(8, t.cols - c0);
  if (n <= 0) return;
  const __m256i m = mask256(n);
  const __m256i comp = _mm256_slli_epi32(_mm256_maskload_epi32(t.colsum + c0, m), 7);
  const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, comp));
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(t.step[r]), _mm256_maskload_ps(t.ws + c0, m));
  __m256 y = _mm256_fmadd_ps(v, s, _mm256_maskload_ps(t.bq + c0, m));
  if (t.combine != Combine::None) y = combine256(y, t.combine);
  if (t.gelu) y = gelu256(y);
  if (t.res) y = _mm256_add_ps(y, _mm256_maskload_ps(t.res[r] + c0, m));
  _mm256_maskstore_ps(t.y[r] + c0, m, y);
}

// 16 columns (half h of the panel) per pass: 2R accumulators + 2 B + 3 temporaries <= 16 ymm.
template <int R>
SHIFTADD_AVX2 void i8_kernel_avx2(const I8Tile& t) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t h = 0; h < 2 && h * 16 < t.cols; ++h) {
    __m256i c0[R], c1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_si256();
    const int8_t* B = t.B + h * 64;
    for (int64_t g = 0; g < t.kg; ++g, B += kGroupBytes) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + 32));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t av;
        std::memcpy(&av, t.A + r * t.lda + g * kDepth, 4);
        const __m256i a = _mm256_set1_epi32(av);
        c0[r] = _mm256_add_epi32(c0[r], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b0), ones));
        c1[r] = _mm256_add_epi32(c1[r], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b1), ones));
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      i8_store256(c0[r], r, h * 16, t);
      i8_store256(c1[r], r, h * 16 + 8, t);
    }
  }
}

SHIFTADD_AVX2 void q16_rows_avx2(const float* const* x, int64_t rows, int64_t K, float* dst) {
  const __m256 lo = _mm256_set1_ps(kQ16Min), hi = _mm256_set1_ps(kQ16Max);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 f = _mm256_floor_ps(_mm256_mul_ps(_mm256_loadu_ps(x[r] + k), _mm256_set1_ps(65536.0f)));
      const __m256 nan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
      f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
      f = _mm256_andnot_ps(nan, f);  // as quantize_q16: NaN -> 0
      _mm256_storeu_ps(dst + r * K + k, _mm256_mul_ps(f, _mm256_set1_ps(0x1p-16f)));
    }
    for (; k < K; ++k) dst[r * K + k] = quantize_q16_float(x[r][k]);
  }
}

#endif  // SHIFTADD_X86

const I8Arch& i8_arch() {
  static constexpr auto ks = row_kernels<I8Kernel, 4>([]<int R>() { return &i8_kernel_scalar<R>; });
  static const I8Arch scalar{4, ks.data()};
#if SHIFTADD_X86
  static constexpr auto kv = row_kernels<I8Kernel, 14>([]<int R>() { return &i8_kernel_vnni<R>; });
  static constexpr auto kb = row_kernels<I8Kernel, 12>([]<int R>() { return &i8_kernel_avx512bw<R>; });
  static constexpr auto k2 = row_kernels<I8Kernel, 4>([]<int R>() { return &i8_kernel_avx2<R>; });
  static const I8Arch vnni{14, kv.data()}, avx512bw{12, kb.data()}, avx2{4, k2.data()};
  switch (isa()) {
    case Isa::Avx512:
      return isa_vnni() ? vnni : avx512bw;
    case Isa::Avx2:
      return avx2;
    case Isa::Scalar:
      break;
  }
#endif
  return scalar;
}

using QuantizeRows = void (*)(const float* const*, int64_t, int64_t, int64_t, uint8_t*, float*);
using Q16Rows = void (*)(const float* const*, int64_t, int64_t, float*);

QuantizeRows quantize_rows() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return quantize_rows_avx512;
#endif
  return quantize_rows_scalar;
}

Q16Rows q16_rows() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return q16_rows_avx512;
  if (isa() == Isa::Avx2) return q16_rows_avx2;
#endif
  return q16_rows_scalar;
}

// ----- the two modes ------------------------------------------------------------------------

int64_t row_of(const ShiftLinearArgs& a, int64_t m) { return a.rows ? a.rows[m] : m; }

void require_panel(const ShiftLinearArgs& a) {
  if (!a.panel.w) throw Error("shift_linear: fast mode needs the layer's prepared panel");
}

// Rows [m0, m1) x panels [p0, p1) of the fast mode, on one thread's scratch.
void fast_block(const ShiftLinearArgs& a, const I8Arch& arch, int64_t m0, int64_t m1, int64_t p0,
                int64_t p1, std::byte* scratch) {
  const int64_t lda = block_lda(a.K), kg = k_groups(a.K), rows = m1 - m0;
  auto* A = reinterpret_cast<uint8_t*>(scratch);
  float* step = reinterpret_cast<float*>(scratch + round_up(block_rows(a.K) * lda, 64));
  float* ws = step + round_up(block_rows(a.K), 16);
  float* bq = ws + (p1 - p0) * kCols;
  const float* xrow[kMaxBlockRows];
  for (int64_t i = 0; i < rows; ++i) xrow[i] = a.x + row_of(a, m0 + i) * a.ldx;
  quantize_rows()(xrow, rows, a.K, lda, A, step);
  const int64_t n0 = p0 * kCols, n1 = std::min(a.N, p1 * kCols);
  for (int64_t n = n0; n < n1; ++n) {
    const float s = a.scale ? a.scale[n] : 1.0f;
    ws[n - n0] = a.panel.row_scale[n] * s;
    bq[n - n0] = (a.bias ? quantize_q16_float(a.bias[n]) : 0.0f) * s;
  }
  float* yrow[kMaxMr];
  const float* rrow[kMaxMr];
  I8Tile t;
  t.lda = lda;
  t.kg = kg;
  t.combine = a.combine;
  t.gelu = a.gelu;
  t.y = yrow;
  t.res = a.residual ? rrow : nullptr;
  // Strip by strip, every panel: a strip's output rows are written whole while its activations
  // sit in L1 (the panels stream from L2).
  for (int64_t i = m0; i < m1; i += arch.mr) {
    const int R = static_cast<int>(std::min<int64_t>(arch.mr, m1 - i));
    t.A = A + (i - m0) * lda;
    t.step = step + (i - m0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p * kCols;
      for (int r = 0; r < R; ++r) {
        const int64_t row = row_of(a, i + r);
        yrow[r] = a.y + row * a.ldy + c;
        if (a.residual) rrow[r] = a.residual + row * a.ldr + c;
      }
      t.B = a.panel.w + p * kg * kGroupBytes;
      t.cols = std::min(kCols, a.N - c);
      t.colsum = a.panel.colsum + c;
      t.ws = ws + (c - n0);
      t.bq = bq + (c - n0);
      arch.kernels[R - 1](t);
    }
  }
}

}  // namespace

void shift_linear_fast_serial(const ShiftLinearArgs& a, std::byte* scratch, int64_t n0, int64_t n1) {
  require_panel(a);
  if (n0 % kCols != 0 || (n1 % kCols != 0 && n1 != a.N))
    throw Error("shift_linear_fast_serial: columns must start and end on a 32-column panel");
  const I8Arch& arch = i8_arch();
  const int64_t p0 = n0 / kCols, p1 = (n1 + kCols - 1) / kCols, rows = block_rows(a.K);
  for (int64_t m = 0; m < a.M; m += rows) fast_block(a, arch, m, std::min(a.M, m + rows), p0, p1, scratch);
}

namespace {

void shift_linear_fast(const ShiftLinearArgs& a, ThreadPool& pool) {
  require_panel(a);
  if (pool.scratch_bytes() < shift_linear_scratch_bytes(a))
    throw Error("shift_linear: thread pool scratch not reserved (need shift_linear_scratch_bytes())");
  const I8Arch& arch = i8_arch();
  const int64_t panels = (a.N + kCols - 1) / kCols;
  const double macs = static_cast<double>(a.M) * a.N * std::max<int64_t>(a.K, 1);
  const int64_t threads = std::clamp<int64_t>(static_cast<int64_t>(macs / kMinMacsPerThread), 1, pool.size());
  // Row blocks that fit the scratch, as many as threads when there are rows for them (a whole
  // number of blocks per thread); the panels split too when rows alone cannot feed every thread.
  int64_t mblocks = (a.M + block_rows(a.K) - 1) / block_rows(a.K);
  if (mblocks < threads) mblocks = std::min<int64_t>(threads, (a.M + arch.mr - 1) / arch.mr);
  else mblocks = (mblocks + threads - 1) / threads * threads;
  const int64_t nsplit = mblocks >= threads ? 1 : std::min(panels, (threads + mblocks - 1) / mblocks);
  auto task = [&](int tid, int64_t t) {
    const int64_t ib = t / nsplit, in = t % nsplit;
    fast_block(a, arch, a.M * ib / mblocks, a.M * (ib + 1) / mblocks, panels * in / nsplit,
               panels * (in + 1) / nsplit, reinterpret_cast<std::byte*>(pool.scratch(tid)));
  };
  const int64_t tasks = mblocks * nsplit;
  if (threads == 1) {
    for (int64_t t = 0; t < tasks; ++t) task(0, t);
  } else {
    pool.parallel_tasks(tasks, task);
  }
}

void shift_linear_exact(const ShiftLinearArgs& a, ThreadPool& pool) {
  if (!a.work) throw Error("shift_linear: exact mode needs a work buffer (shift_linear_work_bytes())");
  float* xq = static_cast<float*>(a.work);
  float* bq = xq + round_up(a.M * a.K, 16);
  const Q16Rows q16 = q16_rows();
  parallel_chunks(pool, a.M, a.K, 1 << 15, [&](int64_t m0, int64_t m1) {
    const float* xrow[64];
    for (int64_t i = m0; i < m1; i += 64) {
      const int64_t n = std::min<int64_t>(64, m1 - i);
      for (int64_t r = 0; r < n; ++r) xrow[r] = a.x + row_of(a, i + r) * a.ldx;
      q16(xrow, n, a.K, xq + i * a.K);
    }
  });
  // The GEMM epilogue computes acc * scale + bias: the bias is q(b) * scale.
  if (a.bias)
    for (int64_t n = 0; n < a.N; ++n) bq[n] = quantize_q16_float(a.bias[n]) * (a.scale ? a.scale[n] : 1.0f);
  GemmArgs g;
  g.M = a.M, g.N = a.N, g.K = a.K;
  g.A = xq, g.lda = a.K;
  g.B_codes = a.codes, g.ldb = a.ldw, g.b_is_nk = true;
  g.C = a.y, g.ldc = a.ldy, g.c_rows = a.rows;
  g.epi.scale = a.scale;
  g.epi.combine = a.combine;
  g.epi.bias = a.bias ? bq : nullptr;
  g.epi.gelu = a.gelu;
  g.epi.residual = a.residual;
  g.epi.ldr = a.ldr;
  g.B_packed = a.w_packed, g.B_packed_nr = a.w_packed_nr;
  gemm(g, pool);
}

}  // namespace

size_t shift_linear_scratch_bytes(const ShiftLinearArgs& a) {
  if (a.mode == ShiftMode::Exact) return gemm_scratch_bytes();
  const int64_t rows = block_rows(a.K);
  return static_cast<size_t>(round_up(rows * block_lda(a.K), 64) +
                             4 * (round_up(rows, 16) + 2 * round_up(a.N, kCols)));
}

size_t shift_linear_work_bytes(const ShiftLinearArgs& a) {
  return a.mode == ShiftMode::Exact ? static_cast<size_t>(4 * (round_up(a.M * a.K, 16) + a.N)) : 0;
}

size_t shift_panel_bytes(int64_t N, int64_t K) {
  return static_cast<size_t>(round_up(N, kCols) * k_groups(K) * kDepth);
}

int64_t pack_shift_panel(const uint8_t* codes, int64_t N, int64_t K, int64_t ldw, int8_t* w,
                         int32_t* colsum, float* row_scale) {
  const int64_t kg = k_groups(K);
  std::memset(w, 0, shift_panel_bytes(N, K));
  int64_t dropped = 0;
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* c = codes + n * ldw;
    const int e = shift_row_exponent(c, K);
    row_scale[n] = shift_row_scale(e);
    int8_t* panel = w + (n / kCols) * kg * kGroupBytes + (n % kCols) * kDepth;
    int32_t sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int8_t q = shift_code_int8(c[k], e);
      dropped += q == 0 && !shift_code_is_zero(c[k]);
      panel[(k / kDepth) * kGroupBytes + k % kDepth] = q;
      sum += q;
    }
    colsum[n] = sum;
  }
  return dropped;
}

void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes,
                      ThreadPool& pool) {
  parallel_chunks(pool, n, 1, 65536, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) codes[i] = pack_shift_weight(shift[i], sign[i]);
  });
}

void shift_linear(const ShiftLinearArgs& a, ThreadPool& pool) {
  if (a.M <= 0 || a.N <= 0) return;
  if (a.mode == ShiftMode::Fast)
    shift_linear_fast(a, pool);
  else
    shift_linear_exact(a, pool);
}

}  // namespace shiftadd::kernels::cpu
