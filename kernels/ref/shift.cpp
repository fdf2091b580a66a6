// Reference shift-code packing and shift linear (spec section 3): plain integer loops.
#include "engine/shift_codes.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::ref {

void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i) codes[i] = pack_shift_weight(shift[i], sign[i]);
}

void shift_linear(const ShiftLinearArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const float* x = a.x + m * a.ldx;
    for (int64_t n = 0; n < a.N; ++n) {
      const uint8_t* w = a.codes + n * a.ldw;
      const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
      float y;
      if (a.mode == ShiftMode::Exact) {
        int64_t T = B * (int64_t{1} << 14);
        for (int64_t k = 0; k < a.K; ++k) {
          const int g = shift_code_sign(w[k]);
          if (g == 0) continue;
          const int64_t t = static_cast<int64_t>(quantize_q16(x[k])) << shift_code_lshift(w[k]);
          T += g > 0 ? t : -t;
        }
        y = static_cast<float>(T) * 0x1p-30f;
      } else {
        int64_t T = B;
        for (int64_t k = 0; k < a.K; ++k) {
          const int g = shift_code_sign(w[k]);
          if (g == 0) continue;
          int32_t X = quantize_q16(x[k]);
          X = X > (1 << 27) ? (1 << 27) : X < -(1 << 27) ? -(1 << 27) : X;
          const int64_t t = X >> (-shift_code_exponent(w[k]));
          T += g > 0 ? t : -t;
        }
        y = static_cast<float>(T) * 0x1p-16f;
      }
      a.y[m * a.ldy + n] = y;
    }
  }
}

}  // namespace shiftadd::kernels::ref
