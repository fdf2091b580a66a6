// MoE routing helpers (spec section 4) on the CPU: router logits and top-1 choice, the O(M)
// per-expert plan and the dense expert's row gather.
#include <cmath>
#include <cstring>

#include "kernels/cpu/parallel.h"
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

}  // namespace

void moe_router(const RouterArgs& a, ThreadPool& pool) {
  parallel_chunks(pool, a.M, 2 * a.K, 65536, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* x = a.x + m * a.ldx;
      const float l0 = dot8(a.Wg, x, a.K) + (a.bg ? a.bg[0] : 0.0f);
      const float l1 = dot8(a.Wg + a.K, x, a.K) + (a.bg ? a.bg[1] : 0.0f);
      if (a.logits) a.logits[2 * m] = l0, a.logits[2 * m + 1] = l1;
      a.expert[m] = l1 > l0 ? 1 : 0;
    }
  });
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

void moe_gather(int64_t begin, int64_t end, int64_t cols, const int32_t* perm, const float* src,
                int64_t lds, float* dst, int64_t ldd, ThreadPool& pool) {
  parallel_chunks(pool, end - begin, cols, 65536, [&](int64_t i0, int64_t i1) {
    for (int64_t i = begin + i0; i < begin + i1; ++i)
      std::memcpy(dst + (i - begin) * ldd, src + perm[i] * lds, sizeof(float) * cols);
  });
}

}  // namespace shiftadd::kernels::cpu
