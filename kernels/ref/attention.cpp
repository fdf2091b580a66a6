// Reference multi-head attention: scores, max-subtracted softmax, weighted sum, all in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace shiftadd::kernels::ref {

void attention(const AttentionArgs& a) {
  std::vector<double> p(static_cast<size_t>(a.Nkv));
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t h = 0; h < a.H; ++h) {
      const float* q = a.q + b * a.q_bstride + h * a.d;
      const float* k = a.k + b * a.k_bstride + h * a.d;
      const float* v = a.v + b * a.v_bstride + h * a.d;
      float* out = a.out + b * a.o_bstride + h * a.d;
      for (int64_t n = 0; n < a.Nq; ++n) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < a.Nkv; ++j) {
          double s = 0.0;
          for (int64_t c = 0; c < a.d; ++c)
            s += static_cast<double>(q[n * a.q_ld + c]) * k[j * a.k_ld + c];
          p[j] = a.scale * s;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < a.Nkv; ++j) sum += (p[j] = std::exp(p[j] - mx));
        for (int64_t c = 0; c < a.d; ++c) {
          double o = 0.0;
          for (int64_t j = 0; j < a.Nkv; ++j) o += p[j] * v[j * a.v_ld + c];
          out[n * a.o_ld + c] = static_cast<float>(o / sum);
        }
      }
    }
  }
}

}  // namespace shiftadd::kernels::ref
