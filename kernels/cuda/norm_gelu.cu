// LayerNorm and the small elementwise / token ops: add, mean over tokens, take tokens, token
// embedding, fill.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace shiftadd::kernels::cuda {
namespace {

// One warp per row; two passes (mean, then centred variance) as ref::layernorm, in fp32 with
// per-lane partial sums reduced across the warp.
__global__ void layernorm_kernel(int64_t rows, int64_t cols, const float* x, int64_t ldx, const float* gamma,
                                 const float* beta, float eps, float* y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) >> 5;
  if (row >= rows) return;
  const float* xr = x + row * ldx;
  float s = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) s += xr[c];
  const float mean = warp_sum(s) / static_cast<float>(cols);
  float v = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) {
    const float t = xr[c] - mean;
    v += t * t;
  }
  const float var = warp_sum(v) / static_cast<float>(cols);
  const float rstd = rsqrtf(var + eps);
  float* yr = y + row * ldy;
  for (int64_t c = lane; c < cols; c += 32) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
}

__global__ void add_kernel(int64_t n, const float* a, const float* b, float alpha, float* y) {
  SHIFTADD_GRID_LOOP(i, n) y[i] = alpha * (a[i] + b[i]);
}

__global__ void mean_tokens_kernel(int64_t B, int64_t N, int64_t C, const float* x, float* out) {
  SHIFTADD_GRID_LOOP(i, B * C) {
    const int64_t b = i / C, c = i - b * C;
    const float* p = x + b * N * C + c;
    float s = 0.0f;
    for (int64_t n = 0; n < N; ++n) s += p[n * C];
    out[i] = s / static_cast<float>(N);
  }
}

__global__ void take_tokens_kernel(int64_t B, int64_t N, int64_t C, int64_t first, int64_t count,
                                   const float* x, float* out) {
  SHIFTADD_GRID_LOOP(i, B * count * C) {
    const int64_t b = i / (count * C), r = i - b * count * C;
    out[i] = x[(b * N + first) * C + r];
  }
}

__global__ void embed_tokens_kernel(int64_t B, int64_t Np, int64_t P, int64_t C, const float* patches,
                                    const float* prefix, const float* pos, float* out) {
  const int64_t T = P + Np;
  SHIFTADD_GRID_LOOP(i, B * T * C) {
    const int64_t b = i / (T * C), r = i - b * T * C, t = r / C, c = r - t * C;
    const float v = t < P ? prefix[t * C + c] : patches[(b * Np + t - P) * C + c];
    out[i] = v + (pos ? pos[t * C + c] : 0.0f);
  }
}

__global__ void fill_kernel(int64_t n, float value, float* y) {
  SHIFTADD_GRID_LOOP(i, n) y[i] = value;
}

}  // namespace

void layernorm(const LayerNormArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return;
  SHIFTADD_LAUNCH(layernorm_kernel, blocks_for(a.rows * 32), kThreads, 0, stream)(a.rows, a.cols, a.x, a.ldx, a.gamma,
                                                                                  a.beta, a.eps, a.y, a.ldy);
}

void add(int64_t n, const float* a, const float* b, float alpha, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  SHIFTADD_LAUNCH(add_kernel, blocks_for(n), kThreads, 0, stream)(n, a, b, alpha, y);
}

void mean_tokens(const MeanTokensArgs& a, cudaStream_t stream) {
  if (a.B * a.C <= 0) return;
  SHIFTADD_LAUNCH(mean_tokens_kernel, blocks_for(a.B * a.C), kThreads, 0, stream)(a.B, a.N, a.C, a.x, a.out);
}

void take_tokens(const TakeTokensArgs& a, cudaStream_t stream) {
  const int64_t n = a.B * a.count * a.C;
  if (n <= 0) return;
  SHIFTADD_LAUNCH(take_tokens_kernel, blocks_for(n), kThreads, 0, stream)(a.B, a.N, a.C, a.first, a.count, a.x,
                                                                          a.out);
}

void embed_tokens(const EmbedTokensArgs& a, cudaStream_t stream) {
  const int64_t n = a.B * (a.P + a.Np) * a.C;
  if (n <= 0) return;
  SHIFTADD_LAUNCH(embed_tokens_kernel, blocks_for(n), kThreads, 0, stream)(a.B, a.Np, a.P, a.C, a.patches, a.prefix,
                                                                           a.pos, a.out);
}

void fill(int64_t n, float value, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  SHIFTADD_LAUNCH(fill_kernel, blocks_for(n), kThreads, 0, stream)(n, value, y);
}

}  // namespace shiftadd::kernels::cuda
