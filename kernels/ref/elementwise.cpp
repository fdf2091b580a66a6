// Reference elementwise ops: exact-erf GELU, token embedding, mean over tokens, token selection,
// scaled add.
#include <cmath>

#include "kernels/kernels.h"

namespace shiftadd::kernels::ref {

void gelu(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    y[i] = static_cast<float>(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
  }
}

void embed_tokens(const EmbedTokensArgs& a) {
  const int64_t T = a.P + a.Np;
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const float* src = t < a.P ? a.prefix + t * a.C : a.patches + (b * a.Np + t - a.P) * a.C;
      float* dst = a.out + (b * T + t) * a.C;
      for (int64_t c = 0; c < a.C; ++c) dst[c] = src[c] + (a.pos ? a.pos[t * a.C + c] : 0.0f);
    }
  }
}

void mean_tokens(const MeanTokensArgs& a) {
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t c = 0; c < a.C; ++c) {
      double sum = 0.0;
      for (int64_t n = 0; n < a.N; ++n) sum += a.x[(b * a.N + n) * a.C + c];
      a.out[b * a.C + c] = static_cast<float>(sum / static_cast<double>(a.N));
    }
}

void take_tokens(const TakeTokensArgs& a) {
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t t = 0; t < a.count; ++t)
      for (int64_t c = 0; c < a.C; ++c) a.out[(b * a.count + t) * a.C + c] = a.x[(b * a.N + a.first + t) * a.C + c];
}

void add(int64_t n, const float* a, const float* b, float alpha, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = alpha * (a[i] + b[i]);
}

}  // namespace shiftadd::kernels::ref
