// Reference LayerNorm (two-pass mean/variance in double).
#include <cmath>

#include "kernels/kernels.h"

namespace shiftadd::kernels::ref {

void layernorm(const LayerNormArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.x + r * a.ldx;
    float* y = a.y + r * a.ldy;
    double mean = 0.0;
    for (int64_t c = 0; c < a.cols; ++c) mean += x[c];
    mean /= static_cast<double>(a.cols);
    double var = 0.0;
    for (int64_t c = 0; c < a.cols; ++c) var += (x[c] - mean) * (x[c] - mean);
    var /= static_cast<double>(a.cols);
    const double rstd = 1.0 / std::sqrt(var + a.eps);
    for (int64_t c = 0; c < a.cols; ++c)
      y[c] = static_cast<float>((x[c] - mean) * rstd * a.gamma[c] + a.beta[c]);
  }
}

}  // namespace shiftadd::kernels::ref
