#pragma once
// Shared helpers of the CUDA kernels: grid sizing and warp reductions.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

// Kernel launches and dynamic shared memory go through these two macros so the same source also
// compiles as C++ against cudasim (cudasim/: the CUDA tests on a machine without a GPU):
//   SHIFTADD_LAUNCH(kernel, grid, block, smem, stream)(args...)  is  kernel<<<grid, block, smem, stream>>>(args...)
#if defined(SHIFTADD_CUDA_SIM)
#define SHIFTADD_LAUNCH(kernel, grid, block, smem, stream) \
  ::cudasim::launch(kernel, #kernel, __PRETTY_FUNCTION__, grid, block, smem, stream)
#define SHIFTADD_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::cudasim::dynamic_shared())
#else
#define SHIFTADD_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define SHIFTADD_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

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

// The MoE combine (kernels.h combine_value) in fp32.
__device__ __forceinline__ float combine_dev(float y, Combine c) {
  if (c == Combine::LogExp) return logf(expf(y) + kCombineEps);
  if (c == Combine::Limits) return y > kCombineMax ? INFINITY : y < kCombineFloor ? kCombineFloor : y;
  return y;
}

// Grid-stride loop over [0, n).
#define SHIFTADD_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{gridDim.x} * blockDim.x)

// Rows of a RowMap-tiled kernel: the tile of `tile` rows starting at m0 covers positions
// [lo, hi) of the map; src_row[r] receives the input/output row of tile row r (perm[m], or m) and
// -1 outside. Returns false (for the whole block: lo, hi and m0 are block-uniform) when the tile
// has no row to compute; otherwise all threads of the block have synchronised.
__device__ __forceinline__ bool map_tile_rows(const RowMap& rows, int64_t M, int64_t m0, int tile,
                                              int64_t* src_row) {
  const int64_t lo = rows.lo ? static_cast<int64_t>(*rows.lo) : 0;
  const int64_t hi = rows.hi ? min(M, static_cast<int64_t>(*rows.hi)) : M;
  if (m0 >= hi || m0 + tile <= lo) return false;
  for (int r = threadIdx.x; r < tile; r += blockDim.x) {
    const int64_t m = m0 + r;
    src_row[r] = (m >= lo && m < hi) ? (rows.perm ? static_cast<int64_t>(rows.perm[m]) : m) : -1;
  }
  __syncthreads();
  return true;
}

// The per-output epilogue of the MoE experts and shift layers: the combine, then GELU.
__device__ __forceinline__ float row_epilogue(float y, const RowMap& rows) {
  y = combine_dev(y, rows.combine);
  return rows.gelu ? gelu_erf(y) : y;
}

}  // namespace shiftadd::kernels::cuda
