// Reference shift-code packing and shift linear (spec section 3): plain integer loops.
#include <cmath>
#include <vector>

#include "core/shift_codes.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::ref {

void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i) codes[i] = pack_shift_weight(shift[i], sign[i]);
}

namespace {

// Exact: the exact value of q(x) W^T + q(b), rounded once to fp32.
float exact_dot(const float* x, const uint8_t* w, int64_t K, const float* bias) {
  int64_t T = bias ? int64_t{quantize_q16(*bias)} * (int64_t{1} << 14) : 0;
  for (int64_t k = 0; k < K; ++k) {
    const int g = shift_code_sign(w[k]);
    if (g == 0) continue;
    const int64_t t = static_cast<int64_t>(quantize_q16(x[k])) << shift_code_lshift(w[k]);
    T += g > 0 ? t : -t;
  }
  return static_cast<float>(T) * 0x1p-30f;
}

}  // namespace

void shift_linear(const ShiftLinearArgs& a) {
  const bool fast = a.mode == ShiftMode::Fast;
  std::vector<int> row_exp(static_cast<size_t>(a.N));
  for (int64_t n = 0; n < a.N; ++n) row_exp[n] = shift_row_exponent(a.codes + n * a.ldw, a.K);
  for (int64_t m = 0; m < a.M; ++m) {
    const int64_t row = a.rows ? a.rows[m] : m;
    const float* x = a.x + row * a.ldx;
    float amax = 0.0f;
    for (int64_t k = 0; k < a.K; ++k) amax = std::fabs(x[k]) > amax ? std::fabs(x[k]) : amax;
    const float inv = int8_quant_inv(amax), step = int8_quant_step(amax);
    for (int64_t n = 0; n < a.N; ++n) {
      const uint8_t* w = a.codes + n * a.ldw;
      const float scale = a.scale ? a.scale[n] : 1.0f;
      float y;
      if (!fast) {
        y = exact_dot(x, w, a.K, a.bias ? a.bias + n : nullptr);
        if (a.scale) y *= scale;
      } else {
        int32_t acc = 0;
        for (int64_t k = 0; k < a.K; ++k)
          acc += int32_t{quantize_int8(x[k], inv)} * shift_code_int8(w[k], row_exp[n]);
        const float ws = shift_row_scale(row_exp[n]) * scale;
        const float bq = (a.bias ? quantize_q16_float(a.bias[n]) : 0.0f) * scale;
        y = std::fma(static_cast<float>(acc), step * ws, bq);
      }
      y = combine_value(y, a.combine);
      if (a.gelu) gelu(1, &y, &y);
      if (a.residual) y += a.residual[row * a.ldr + n];
      a.y[row * a.ldy + n] = y;
    }
  }
}

}  // namespace shiftadd::kernels::ref
