// Reference direct 2-D convolution (NCHW or token-major input), output token-major
// [B, OH*OW, Cout]; and the depthwise 3x3 convolution over a token-major grid.
#include <cmath>

#include "kernels/kernels.h"

namespace shiftadd::kernels::ref {

void conv2d(const Conv2dArgs& a) {
  const int64_t OH = a.OH(), OW = a.OW();
  for (int64_t b = 0; b < a.B; ++b) {
    const float* x = a.x + b * a.Cin * a.H * a.W;
    // Element (ci, iy, ix) of this image in either layout.
    auto at = [&](int64_t ci, int64_t iy, int64_t ix) {
      return a.channels_last ? x[(iy * a.W + ix) * a.Cin + ci] : x[(ci * a.H + iy) * a.W + ix];
    };
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
                acc += static_cast<double>(at(ci, iy, ix)) *
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

void dwconv3x3(const DwConv3x3Args& a) {
  for (int64_t b = 0; b < a.B; ++b) {
    const float* x = a.x + b * a.H * a.W * a.C;
    for (int64_t y = 0; y < a.H; ++y)
      for (int64_t xx = 0; xx < a.W; ++xx)
        for (int64_t c = 0; c < a.C; ++c) {
          double acc = a.bias ? a.bias[c] : 0.0;
          for (int64_t ky = 0; ky < 3; ++ky)
            for (int64_t kx = 0; kx < 3; ++kx) {
              const int64_t iy = y + ky - 1, ix = xx + kx - 1;
              if (iy < 0 || iy >= a.H || ix < 0 || ix >= a.W) continue;
              acc += static_cast<double>(x[(iy * a.W + ix) * a.C + c]) * a.w[(ky * 3 + kx) * a.C + c];
            }
          if (a.gelu) acc = 0.5 * acc * (1.0 + std::erf(acc / std::sqrt(2.0)));
          a.out[((b * a.H + y) * a.W + xx) * a.C + c] = static_cast<float>(acc);
        }
  }
}

}  // namespace shiftadd::kernels::ref
