// Depthwise 3x3 convolution (stride 1, pad 1) on token-major [B, H*W, C] data, the PVTv2 MLP's
// DWConv, with an optional fused exact GELU. One work item = one output row of the grid. The
// weight is taps-major [3, 3, C] (see kernels.h).
// AVX-512: per 16 channels, the nine tap weights and the bias stay in registers while the row is
// swept left to right, 8 tokens at a time, with a 3x3 window of input vectors in registers (three
// new loads per output instead of eighteen); rows above or below the grid read the centre row with
// zero weights, so the sweep has no branches. AVX2 and scalar: per output token, the valid taps.
#include <algorithm>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "shiftadd/error.h"

namespace shiftadd::kernels::cpu {
namespace {

constexpr int64_t kMinElemsPerThread = 16384;
// AVX-512 sweeps: tokens per sweep, so the three input rows stream through the cache token by
// token (every channel of a few tokens) rather than in strided 64-byte pieces (one per sweep).
constexpr int64_t kTileTokens = 8;

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
// Output row y of image img (rows of W tokens x C channels) into out.
SHIFTADD_AVX512 void row_avx512(const DwConv3x3Args& a, const float* img, int64_t y, float* out) {
  const int64_t W = a.W, C = a.C;
  const float* rows[3];
  bool valid[3];
  for (int ky = 0; ky < 3; ++ky) {
    const int64_t iy = y + ky - 1;
    valid[ky] = iy >= 0 && iy < a.H;
    rows[ky] = img + (valid[ky] ? iy : y) * W * C;
  }
  const bool prefetch = y + 2 < a.H;
  const float* next = prefetch ? img + (y + 2) * W * C : img;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t x0 = 0; x0 < W; x0 += kTileTokens) {
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = mask16(C - c);
      __m512 w[3][3];
      for (int ky = 0; ky < 3; ++ky)
        for (int kx = 0; kx < 3; ++kx)
          w[ky][kx] = valid[ky] ? _mm512_maskz_loadu_ps(m, a.w + (ky * 3 + kx) * C + c) : zero;
      const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(m, a.bias + c) : zero;
      // Window columns x - 1, x, x + 1 of the three input rows (zero outside the grid).
      __m512 left[3], mid[3], right[3];
      for (int ky = 0; ky < 3; ++ky) {
        left[ky] = x0 > 0 ? _mm512_maskz_loadu_ps(m, rows[ky] + (x0 - 1) * C + c) : zero;
        mid[ky] = _mm512_maskz_loadu_ps(m, rows[ky] + x0 * C + c);
      }
      for (int64_t x = x0, x1 = std::min(W, x0 + kTileTokens); x < x1; ++x) {
        // The next output row's new input row, into L2 while this row computes (the hardware
        // prefetcher misses the strided sweep; the other two rows are already cached).
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(next + x * C + c), _MM_HINT_T1);
        const bool has_right = x + 1 < W;
        for (int ky = 0; ky < 3; ++ky)
          right[ky] = has_right ? _mm512_maskz_loadu_ps(m, rows[ky] + (x + 1) * C + c) : zero;
        // One partial sum per kernel row: three short chains instead of one of nine FMAs.
        __m512 acc[3];
        for (int ky = 0; ky < 3; ++ky) {
          acc[ky] = _mm512_mul_ps(left[ky], w[ky][0]);
          acc[ky] = _mm512_fmadd_ps(mid[ky], w[ky][1], acc[ky]);
          acc[ky] = _mm512_fmadd_ps(right[ky], w[ky][2], acc[ky]);
        }
        const __m512 v = _mm512_add_ps(_mm512_add_ps(bias, acc[0]), _mm512_add_ps(acc[1], acc[2]));
        _mm512_mask_storeu_ps(out + x * C + c, m, a.gelu ? gelu512(v) : v);
        for (int ky = 0; ky < 3; ++ky) left[ky] = mid[ky], mid[ky] = right[ky];
      }
    }
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

// Output row y of image img, token by token over the valid taps (the AVX2 and scalar paths).
template <Token token>
void row_taps(const DwConv3x3Args& a, const float* img, int64_t y, float* out) {
  for (int64_t x = 0; x < a.W; ++x) token(a, taps_at(a, img, y, x), out + x * a.C);
}

using Row = void (*)(const DwConv3x3Args& a, const float* img, int64_t y, float* out);

Row row_fn() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return row_avx512;
  if (isa() == Isa::Avx2) return row_taps<token_avx2>;
#endif
  return row_taps<token_scalar>;
}

}  // namespace

void dwconv3x3(const DwConv3x3Args& a, ThreadPool& pool) {
  if (a.B <= 0 || a.H <= 0 || a.W <= 0 || a.C <= 0) return;
  if (a.x == a.out) throw Error("dwconv3x3: output must not alias the input");
  const Row row = row_fn();
  parallel_chunks(pool, a.B * a.H, a.W * a.C * 9, kMinElemsPerThread, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / a.H, y = r % a.H;
      row(a, a.x + b * a.H * a.W * a.C, y, a.out + r * a.W * a.C);
    }
  });
}

}  // namespace shiftadd::kernels::cpu
