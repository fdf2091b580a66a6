// LayerNorm: one row at a time (mean, then variance of the deviations, then the affine
// map), rows spread over the pool when there are enough of them to pay for the wake-up.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"

namespace shiftadd::kernels::cpu {
namespace {

// Elements a thread must have to be worth waking.
constexpr int64_t kMinElemsPerThread = 32768;

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
  if (isa() == Isa::Avx512)
    row = layernorm_row_avx512;
  else if (isa() == Isa::Avx2)
    row = layernorm_row_avx2;
#endif
  if (a.rows <= 0 || a.cols <= 0) return;
  parallel_chunks(pool, a.rows, a.cols, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      row(a.x + r * a.ldx, a.cols, a.gamma, a.beta, a.eps, a.y + r * a.ldy);
  });
}

}  // namespace shiftadd::kernels::cpu
