// MoE routing helpers (spec section 4) on the CPU: router logits and top-1 choice, the O(M)
// per-expert plan (the experts read and write their rows through it).
#include <algorithm>
#include <cstring>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::cpu {
namespace {

// Dot product with 8 independent partial sums (order fixed, independent of threads).
float dot8(const float* a, const float* b, int64_t K) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int i = 0; i < 8; ++i) s[i] += a[k + i] * b[k + i];
  for (; k < K; ++k) s[k & 7] += a[k] * b[k];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void route(const RouterArgs& a, int64_t m, float l0, float l1) {
  l0 += a.bg ? a.bg[0] : 0.0f;
  l1 += a.bg ? a.bg[1] : 0.0f;
  if (a.logits) a.logits[2 * m] = l0, a.logits[2 * m + 1] = l1;
  a.expert[m] = l1 > l0 ? 1 : 0;
}

void router_rows_scalar(const RouterArgs& a, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = a.x + m * a.ldx;
    route(a, m, dot8(a.Wg, x, a.K), dot8(a.Wg + a.K, x, a.K));
  }
}

#if SHIFTADD_X86
// Four rows at a time: both gate rows are loaded once per 16 columns for all four.
SHIFTADD_AVX512 void router_rows_avx512(const RouterArgs& a, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; m += 4) {
    const int rows = static_cast<int>(std::min<int64_t>(4, m1 - m));
    __m512 acc[4][2];
    for (auto& r : acc) r[0] = r[1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < a.K; k += 16) {
      const __mmask16 mk = mask16(a.K - k);
      const __m512 w0 = _mm512_maskz_loadu_ps(mk, a.Wg + k), w1 = _mm512_maskz_loadu_ps(mk, a.Wg + a.K + k);
      for (int r = 0; r < 4; ++r) {
        const __m512 x = _mm512_maskz_loadu_ps(mk, a.x + (m + std::min(r, rows - 1)) * a.ldx + k);
        acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
      }
    }
    for (int r = 0; r < rows; ++r)
      route(a, m + r, _mm512_reduce_add_ps(acc[r][0]), _mm512_reduce_add_ps(acc[r][1]));
  }
}
#endif

}  // namespace

void moe_router(const RouterArgs& a, ThreadPool& pool) {
  auto rows = router_rows_scalar;
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) rows = router_rows_avx512;
#endif
  parallel_chunks(pool, a.M, 2 * a.K, 65536, [&](int64_t m0, int64_t m1) { rows(a, m0, m1); });
}

void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]) {
  int64_t n0 = 0;
  for (int64_t m = 0; m < M; ++m) n0 += expert[m] == 0;
  int64_t i0 = 0, i1 = n0;
  for (int64_t m = 0; m < M; ++m) {
    if (expert[m] == 0)
      perm[i0++] = static_cast<int32_t>(m);
    else
      perm[i1++] = static_cast<int32_t>(m);
  }
  counts[0] = n0, counts[1] = M - n0;
}

}  // namespace shiftadd::kernels::cpu
