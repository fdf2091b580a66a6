// Depthwise 3x3 convolution (stride 1, pad 1) on token-major [B, H*W, C] data, the PVTv2 MLP's
// DWConv, with an optional fused exact GELU. One work item = one output row of the grid; per
// output token and per vector of channels the bias and the (up to) nine valid taps accumulate in
// a register, then GELU and one store. The weight is taps-major [3, 3, C] (see kernels.h).
#include <algorithm>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "shiftadd/error.h"

namespace shiftadd::kernels::cpu {
namespace {

constexpr int64_t kMinElemsPerThread = 16384;

// The valid taps of output token (y, x): input token offsets and weight rows.
struct Taps {
  int n = 0;
  const float* src[9];
  const float* w[9];
};

Taps taps_at(const DwConv3x3Args& a, const float* img, int64_t y, int64_t x) {
  Taps t;
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t iy = y + ky - 1;
    if (iy < 0 || iy >= a.H) continue;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t ix = x + kx - 1;
      if (ix < 0 || ix >= a.W) continue;
      t.src[t.n] = img + (iy * a.W + ix) * a.C;
      t.w[t.n] = a.w + (ky * 3 + kx) * a.C;
      ++t.n;
    }
  }
  return t;
}

using Token = void (*)(const DwConv3x3Args& a, const Taps& t, float* out);

void token_scalar(const DwConv3x3Args& a, const Taps& t, float* out) {
  for (int64_t c = 0; c < a.C; ++c) {
    float acc = a.bias ? a.bias[c] : 0.0f;
    for (int i = 0; i < t.n; ++i) acc += t.src[i][c] * t.w[i][c];
    out[c] = a.gelu ? gelu_scalar(acc) : acc;
  }
}

#if SHIFTADD_X86
SHIFTADD_AVX512 void token_avx512(const DwConv3x3Args& a, const Taps& t, float* out) {
  for (int64_t c = 0; c < a.C; c += 16) {
    const __mmask16 m = mask16(a.C - c);
    __m512 acc = a.bias ? _mm512_maskz_loadu_ps(m, a.bias + c) : _mm512_setzero_ps();
    for (int i = 0; i < t.n; ++i)
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, t.src[i] + c),
                            _mm512_maskz_loadu_ps(m, t.w[i] + c), acc);
    _mm512_mask_storeu_ps(out + c, m, a.gelu ? gelu512(acc) : acc);
  }
}

SHIFTADD_AVX2 void token_avx2(const DwConv3x3Args& a, const Taps& t, float* out) {
  int64_t c = 0;
  for (; c + 8 <= a.C; c += 8) {
    __m256 acc = a.bias ? _mm256_loadu_ps(a.bias + c) : _mm256_setzero_ps();
    for (int i = 0; i < t.n; ++i)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(t.src[i] + c), _mm256_loadu_ps(t.w[i] + c), acc);
    _mm256_storeu_ps(out + c, a.gelu ? gelu256(acc) : acc);
  }
  if (c < a.C) {
    const __m256i m = mask256(a.C - c);
    __m256 acc = a.bias ? _mm256_maskload_ps(a.bias + c, m) : _mm256_setzero_ps();
    for (int i = 0; i < t.n; ++i)
      acc = _mm256_fmadd_ps(_mm256_maskload_ps(t.src[i] + c, m),
                            _mm256_maskload_ps(t.w[i] + c, m), acc);
    _mm256_maskstore_ps(out + c, m, a.gelu ? gelu256(acc) : acc);
  }
}
#endif

Token token_fn() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return token_avx512;
  if (isa() == Isa::Avx2) return token_avx2;
#endif
  return token_scalar;
}

}  // namespace

void dwconv3x3(const DwConv3x3Args& a, ThreadPool& pool) {
  if (a.B <= 0 || a.H <= 0 || a.W <= 0 || a.C <= 0) return;
  if (a.x == a.out) throw Error("dwconv3x3: output must not alias the input");
  const Token token = token_fn();
  parallel_chunks(pool, a.B * a.H, a.W * a.C * 9, kMinElemsPerThread, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / a.H, y = r % a.H;
      const float* img = a.x + b * a.H * a.W * a.C;
      float* out = a.out + r * a.W * a.C;
      for (int64_t x = 0; x < a.W; ++x) token(a, taps_at(a, img, y, x), out + x * a.C);
    }
  });
}

}  // namespace shiftadd::kernels::cpu
