// Reference direct 2-D convolution, output token-major [B, OH*OW, Cout].
#include "kernels/kernels.h"

namespace shiftadd::kernels::ref {

void conv2d(const Conv2dArgs& a) {
  const int64_t OH = a.OH(), OW = a.OW();
  for (int64_t b = 0; b < a.B; ++b) {
    const float* x = a.x + b * a.Cin * a.H * a.W;
    for (int64_t oy = 0; oy < OH; ++oy) {
      for (int64_t ox = 0; ox < OW; ++ox) {
        float* out = a.out + (b * OH * OW + oy * OW + ox) * a.Cout;
        for (int64_t co = 0; co < a.Cout; ++co) {
          double acc = a.bias ? a.bias[co] : 0.0;
          for (int64_t ci = 0; ci < a.Cin; ++ci) {
            for (int64_t ky = 0; ky < a.kh; ++ky) {
              const int64_t iy = oy * a.stride - a.pad + ky;
              if (iy < 0 || iy >= a.H) continue;
              for (int64_t kx = 0; kx < a.kw; ++kx) {
                const int64_t ix = ox * a.stride - a.pad + kx;
                if (ix < 0 || ix >= a.W) continue;
                acc += static_cast<double>(x[(ci * a.H + iy) * a.W + ix]) *
                       a.w[((co * a.Cin + ci) * a.kh + ky) * a.kw + kx];
              }
            }
          }
          out[co] = static_cast<float>(acc);
        }
      }
    }
  }
}

}  // namespace shiftadd::kernels::ref
