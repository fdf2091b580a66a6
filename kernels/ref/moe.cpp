// Reference MoE routing helpers (spec section 4).

#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::ref {

void moe_router(const RouterArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    float l[2];
    for (int e = 0; e < 2; ++e) {
      double s = a.bg ? a.bg[e] : 0.0;
      for (int64_t k = 0; k < a.K; ++k)
        s += static_cast<double>(a.Wg[e * a.K + k]) * a.x[m * a.ldx + k];
      l[e] = static_cast<float>(s);
    }
    if (a.logits) a.logits[2 * m] = l[0], a.logits[2 * m + 1] = l[1];
    a.expert[m] = l[1] > l[0] ? 1 : 0;
  }
}

void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]) {
  int64_t n0 = 0;
  for (int64_t m = 0; m < M; ++m)
    if (expert[m] == 0) perm[n0++] = static_cast<int32_t>(m);
  int64_t n1 = n0;
  for (int64_t m = 0; m < M; ++m)
    if (expert[m] != 0) perm[n1++] = static_cast<int32_t>(m);
  counts[0] = n0, counts[1] = M - n0;
}

}  // namespace shiftadd::kernels::ref
