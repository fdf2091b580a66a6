// Elementwise kernels: exact-erf GELU, scaled add, token embedding, mean over tokens, token
// selection. Memory-bound, so they are vectorized for the active SIMD path and split over the
// pool only when large.
#include <cstring>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"

namespace shiftadd::kernels::cpu {
namespace {

constexpr int64_t kMinElemsPerThread = 32768;

using GeluSpan = void (*)(int64_t n, const float* x, float* y);
using AddSpan = void (*)(int64_t n, const float* a, const float* b, float alpha, float* y);

void gelu_span_scalar(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_scalar(x[i]);
}

void add_span_scalar(int64_t n, const float* a, const float* b, float alpha, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = alpha * (a[i] + b[i]);
}

#if SHIFTADD_X86
SHIFTADD_AVX512 void gelu_span_avx512(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask16(n - i);
    _mm512_mask_storeu_ps(y + i, m, gelu512(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

SHIFTADD_AVX512 void add_span_avx512(int64_t n, const float* a, const float* b, float alpha,
                                     float* y) {
  const __m512 s = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask16(n - i);
    const __m512 v =
        _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(s, v));
  }
}

SHIFTADD_AVX2 void gelu_span_avx2(int64_t n, const float* x, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu256(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = mask256(n - i);
    _mm256_maskstore_ps(y + i, m, gelu256(_mm256_maskload_ps(x + i, m)));
  }
}

SHIFTADD_AVX2 void add_span_avx2(int64_t n, const float* a, const float* b, float alpha, float* y) {
  const __m256 s = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(
        y + i, _mm256_mul_ps(s, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i))));
  if (i < n) {
    const __m256i m = mask256(n - i);
    const __m256 v = _mm256_add_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
    _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(s, v));
  }
}
#endif

GeluSpan gelu_span() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return gelu_span_avx512;
  if (isa() == Isa::Avx2) return gelu_span_avx2;
#endif
  return gelu_span_scalar;
}

AddSpan add_span() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return add_span_avx512;
  if (isa() == Isa::Avx2) return add_span_avx2;
#endif
  return add_span_scalar;
}

}  // namespace

void gelu(int64_t n, const float* x, float* y, ThreadPool& pool) {
  const GeluSpan span = gelu_span();
  parallel_chunks(pool, n, 1, kMinElemsPerThread,
                  [&](int64_t begin, int64_t end) { span(end - begin, x + begin, y + begin); });
}

void add(int64_t n, const float* a, const float* b, float alpha, float* y, ThreadPool& pool) {
  const AddSpan span = add_span();
  parallel_chunks(pool, n, 1, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
    span(end - begin, a + begin, b + begin, alpha, y + begin);
  });
}

// Sums token rows with the vectorized add (alpha 1), then scales once: N*C adds per image.
void mean_tokens(const MeanTokensArgs& a, ThreadPool& pool) {
  const AddSpan span = add_span();
  const float inv = 1.0f / static_cast<float>(a.N);
  parallel_chunks(pool, a.B, a.N * a.C, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* x = a.x + b * a.N * a.C;
      float* out = a.out + b * a.C;
      std::memcpy(out, x, a.C * sizeof(float));
      for (int64_t n = 1; n < a.N; ++n) span(a.C, out, x + n * a.C, 1.0f, out);
      for (int64_t c = 0; c < a.C; ++c) out[c] *= inv;
    }
  });
}

// One contiguous block of count * C floats per image (models take 1-2 tokens: inline).
void take_tokens(const TakeTokensArgs& a, ThreadPool& pool) {
  const int64_t n = a.count * a.C;
  parallel_chunks(pool, a.B, n, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      std::memcpy(a.out + b * n, a.x + (b * a.N + a.first) * a.C, n * sizeof(float));
  });
}

void embed_tokens(const EmbedTokensArgs& a, ThreadPool& pool) {
  const AddSpan span = add_span();
  const int64_t T = a.P + a.Np;
  parallel_chunks(pool, a.B * T, a.C, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / T, t = row % T;
      const float* src = t < a.P ? a.prefix + t * a.C : a.patches + (b * a.Np + t - a.P) * a.C;
      float* dst = a.out + row * a.C;
      if (a.pos)
        span(a.C, src, a.pos + t * a.C, 1.0f, dst);
      else
        std::memcpy(dst, src, a.C * sizeof(float));
    }
  });
}

}  // namespace shiftadd::kernels::cpu
