// Convolutions: im2col for the patch embeddings and spatial-reduction convs (the GEMM and its
// bias run on cuBLAS in the backend), and the depthwise 3x3 conv (+ exact GELU) over the
// token grid.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace shiftadd::kernels::cuda {
namespace {

// col[(b*OH + oy)*OW + ox, (ci*kh + ky)*kw + kx] = x(ci, oy*stride - pad + ky, ox*stride - pad + kx)
// or 0 outside the image; NCHW or token-major input.
__global__ void im2col_kernel(Conv2dArgs a, int64_t OH, int64_t OW, float* col) {
  const int64_t Kc = a.Cin * a.kh * a.kw, rows = a.B * OH * OW;
  SHIFTADD_GRID_LOOP(i, rows * Kc) {
    const int64_t r = i / Kc, kc = i - r * Kc;
    const int64_t b = r / (OH * OW), pix = r - b * OH * OW, oy = pix / OW, ox = pix - oy * OW;
    const int64_t ci = kc / (a.kh * a.kw), kk = kc - ci * a.kh * a.kw, ky = kk / a.kw, kx = kk - ky * a.kw;
    const int64_t iy = oy * a.stride - a.pad + ky, ix = ox * a.stride - a.pad + kx;
    float v = 0.0f;
    if (iy >= 0 && iy < a.H && ix >= 0 && ix < a.W) {
      const float* x = a.x + b * a.Cin * a.H * a.W;
      v = a.channels_last ? x[(iy * a.W + ix) * a.Cin + ci] : x[(ci * a.H + iy) * a.W + ix];
    }
    col[i] = v;
  }
}

__global__ void dwconv3x3_kernel(DwConv3x3Args a) {
  SHIFTADD_GRID_LOOP(i, a.B * a.H * a.W * a.C) {
    const int64_t c = i % a.C, pix = i / a.C, b = pix / (a.H * a.W), yx = pix - b * a.H * a.W;
    const int64_t y = yx / a.W, x = yx - y * a.W;
    const float* in = a.x + b * a.H * a.W * a.C;
    float acc = a.bias ? a.bias[c] : 0.0f;
#pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
      const int64_t iy = y + ky - 1;
      if (iy < 0 || iy >= a.H) continue;
#pragma unroll
      for (int kx = 0; kx < 3; ++kx) {
        const int64_t ix = x + kx - 1;
        if (ix < 0 || ix >= a.W) continue;
        acc = fmaf(in[(iy * a.W + ix) * a.C + c], a.w[(ky * 3 + kx) * a.C + c], acc);
      }
    }
    a.out[i] = a.gelu ? gelu_erf(acc) : acc;
  }
}

}  // namespace

void im2col(const Conv2dArgs& a, float* col, cudaStream_t stream) {
  const int64_t OH = a.OH(), OW = a.OW(), n = a.B * OH * OW * a.Cin * a.kh * a.kw;
  if (n <= 0) return;
  SHIFTADD_LAUNCH(im2col_kernel, blocks_for(n), kThreads, 0, stream)(a, OH, OW, col);
}

void dwconv3x3(const DwConv3x3Args& a, cudaStream_t stream) {
  const int64_t n = a.B * a.H * a.W * a.C;
  if (n <= 0) return;
  SHIFTADD_LAUNCH(dwconv3x3_kernel, blocks_for(n), kThreads, 0, stream)(a);
}

}  // namespace shiftadd::kernels::cuda
