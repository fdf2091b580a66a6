#pragma once
// Shared helpers of the CUDA kernels: grid sizing and warp reductions.
#include <cuda_runtime.h>

#include <cstdint>

namespace shiftadd::kernels::cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > (int64_t{1} << 30)) b = int64_t{1} << 30;
  return static_cast<unsigned>(b);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Exact-erf GELU as ref::gelu (in fp32 here).
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// MoE combine of ref::moe_combine (fp32).
__device__ __forceinline__ float log_exp_combine(float y) { return logf(expf(y) + 2.220446e-16f); }

// Grid-stride loop over [0, n).
#define SHIFTADD_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{gridDim.x} * blockDim.x)

}  // namespace shiftadd::kernels::cuda
