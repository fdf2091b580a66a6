// LayerNorm: per row the mean, then the variance of the deviations, then the affine map; 16
// rows at a time on AVX-512, else one at a time; rows spread over the pool when there are
// enough of them to pay for the wake-up.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"

namespace shiftadd::kernels::cpu {
namespace {

// Elements a thread must have to be worth waking.
constexpr int64_t kMinElemsPerThread = 32768;
// Rows of at most this many channels go 16 at a time on AVX-512 (PVTv2-b0, one thread: 32
// channels 35% faster, 64 22%, 160 the same, 256 20% slower: there a row's own dependent adds,
// not its horizontal sums, set the pace).
constexpr int64_t kRows16MaxCols = 128;

void layernorm_row_scalar(const float* x, int64_t n, const float* g, const float* b, float eps,
                          float* y) {
  float sum = 0.0f;
  for (int64_t c = 0; c < n; ++c) sum += x[c];
  const float mean = sum / static_cast<float>(n);
  float sq = 0.0f;
  for (int64_t c = 0; c < n; ++c) sq += (x[c] - mean) * (x[c] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(n) + eps);
  for (int64_t c = 0; c < n; ++c) y[c] = (x[c] - mean) * rstd * g[c] + b[c];
}

#if SHIFTADD_X86
SHIFTADD_AVX512 void layernorm_row_avx512(const float* x, int64_t n, const float* g, const float* b,
                                          float eps, float* y) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16)
    sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask16(n - c), x + c));
  const __m512 mean = _mm512_set1_ps(hsum512(sum) / static_cast<float>(n));
  __m512 sq = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = mask16(n - c);
    const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + c), mean);
    sq = _mm512_fmadd_ps(d, d, sq);
  }
  const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(hsum512(sq) / static_cast<float>(n) + eps));
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = mask16(n - c);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + c), mean), rstd);
    const __m512 v =
        _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, g + c), _mm512_maskz_loadu_ps(m, b + c));
    _mm512_mask_storeu_ps(y + c, m, v);
  }
}

// Lane r of the result: the sum of v[r]'s 16 lanes (16 horizontal sums in 45 shuffles and adds,
// not 16 reductions of ~8 each).
SHIFTADD_AVX512 inline __m512 sums16(const __m512 v[16]) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit chunk: (a0+a2, b0+b2, a1+a3, b1+b3)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per chunk: rows 4i..4i+3, each summed over the chunk
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

SHIFTADD_AVX512 inline __m512 lane(__m512 v, int r) { return _mm512_permutexvar_ps(_mm512_set1_epi32(r), v); }

// Rows [r0, r0 + count), count <= 16, together: their means, variances and 1 / std come out as
// vectors (lane r: row r), so the per-row horizontal sums and the square root are shared (at
// PVTv2's 32-64 channels those were most of a row's time). A short block reads its last row
// again in the unused slots and stores only its own rows, so every row goes through the same
// arithmetic wherever it falls (a row's result does not depend on the batch or thread split).
SHIFTADD_AVX512 void layernorm_rows16_avx512(const LayerNormArgs& a, int64_t r0, int64_t count) {
  const int64_t n = a.cols;
  const float* x[16];
  for (int r = 0; r < 16; ++r) x[r] = a.x + (r0 + std::min<int64_t>(r, count - 1)) * a.ldx;
  __m512 acc[16];
  for (int r = 0; r < 16; ++r) {
    acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n; c += 16) acc[r] = _mm512_add_ps(acc[r], _mm512_maskz_loadu_ps(mask16(n - c), x[r] + c));
  }
  const __m512 nv = _mm512_set1_ps(static_cast<float>(n));
  const __m512 mean = _mm512_div_ps(sums16(acc), nv);
  for (int r = 0; r < 16; ++r) {
    const __m512 m = lane(mean, r);
    acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 k = mask16(n - c);
      const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x[r] + c), m);
      acc[r] = _mm512_fmadd_ps(d, d, acc[r]);
    }
  }
  const __m512 var = _mm512_add_ps(_mm512_div_ps(sums16(acc), nv), _mm512_set1_ps(a.eps));
  const __m512 rstd = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(var));
  for (int r = 0; r < count; ++r) {
    const __m512 m = lane(mean, r), s = lane(rstd, r);
    float* y = a.y + (r0 + r) * a.ldy;
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 k = mask16(n - c);
      const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x[r] + c), m), s);
      _mm512_mask_storeu_ps(y + c, k, _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(k, a.gamma + c), _mm512_maskz_loadu_ps(k, a.beta + c)));
    }
  }
}

// Full vectors use plain loads/stores: AMD implements VMASKMOVPS stores in microcode, so the
// masked forms are kept for the tail only.
SHIFTADD_AVX2 void layernorm_row_avx2(const float* x, int64_t n, const float* g, const float* b,
                                      float eps, float* y) {
  const int64_t full = n / 8 * 8;
  const __m256i tail = mask256(n - full);
  __m256 sum = _mm256_maskload_ps(x + full, tail);
  for (int64_t c = 0; c < full; c += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(x + c));
  const __m256 mean = _mm256_set1_ps(hsum256(sum) / static_cast<float>(n));
  const __m256 dt = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + full, tail), mean),
                                  _mm256_castsi256_ps(tail));
  __m256 sq = _mm256_mul_ps(dt, dt);
  for (int64_t c = 0; c < full; c += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + c), mean);
    sq = _mm256_fmadd_ps(d, d, sq);
  }
  const __m256 rstd = _mm256_set1_ps(1.0f / std::sqrt(hsum256(sq) / static_cast<float>(n) + eps));
  for (int64_t c = 0; c < full; c += 8) {
    const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), mean), rstd);
    _mm256_storeu_ps(y + c, _mm256_fmadd_ps(d, _mm256_loadu_ps(g + c), _mm256_loadu_ps(b + c)));
  }
  if (full < n) {
    const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + full, tail), mean), rstd);
    const __m256 v =
        _mm256_fmadd_ps(d, _mm256_maskload_ps(g + full, tail), _mm256_maskload_ps(b + full, tail));
    _mm256_maskstore_ps(y + full, tail, v);
  }
}
#endif

}  // namespace

void layernorm(const LayerNormArgs& a, ThreadPool& pool) {
  auto row = layernorm_row_scalar;
#if SHIFTADD_X86
  bool rows16 = false;  // rows of up to kRows16MaxCols, 16 at a time (AVX-512)
  if (isa() == Isa::Avx512) {
    row = layernorm_row_avx512;
    rows16 = a.cols <= kRows16MaxCols;
  } else if (isa() == Isa::Avx2) {
    row = layernorm_row_avx2;
  }
#endif
  if (a.rows <= 0 || a.cols <= 0) return;
  parallel_chunks(pool, a.rows, a.cols, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
#if SHIFTADD_X86
    if (rows16) {
      for (int64_t r = begin; r < end; r += 16) layernorm_rows16_avx512(a, r, std::min<int64_t>(16, end - r));
      return;
    }
#endif
    for (int64_t r = begin; r < end; ++r) row(a.x + r * a.ldx, a.cols, a.gamma, a.beta, a.eps, a.y + r * a.ldy);
  });
}

}  // namespace shiftadd::kernels::cpu
