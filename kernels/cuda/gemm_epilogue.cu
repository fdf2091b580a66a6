// Dense GEMM helpers: the fused epilogue after cuBLAS (bias, exact GELU, residual), fp16
// conversion for the fp16 math mode, and a tiled fp32 GEMM over the rows of a RowMap (the MoE
// dense expert inside a captured CUDA graph: split point and permutation read on the device;
// the tiling is row_tiled.cuh's).
#include <cuda_fp16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/row_tiled.cuh"

namespace shiftadd::kernels::cuda {
namespace {

__global__ void epilogue_kernel(int64_t M, int64_t N, const float* G, int64_t ldg, float* C, int64_t ldc,
                                const float* bias, bool gelu, const float* res, int64_t ldr) {
  SHIFTADD_GRID_LOOP(i, M * N) {
    const int64_t m = i / N, n = i - m * N;
    float c = G[m * ldg + n];
    if (bias) c += bias[n];
    if (gelu) c = gelu_erf(c);
    if (res) c += res[m * ldr + n];
    C[m * ldc + n] = c;
  }
}

__global__ void to_half_kernel(int64_t n, const float* x, __half* y) {
  SHIFTADD_GRID_LOOP(i, n) y[i] = __float2half_rn(x[i]);
}

// The MoE dense expert (GemmArgs, B stored [N, K] or [K, N]): fp32 FMAs, K in slices of 16;
// rows are RowMap positions (input and output row perm[m], only lo <= m < hi).
struct DenseRows {
  using Args = GemmArgs;
  using Acc = float;
  static constexpr int TK = 16;
  struct Tile {
    float A[TK][kRowTileM + 1];
    float B[TK][kRowTileN + 1];
  };
  static __device__ __forceinline__ void stage(const Args& a, Tile& t, int r, int kk, int64_t src, int64_t n,
                                               int64_t k, int64_t) {
    t.A[kk][r] = (src >= 0 && k < a.K) ? a.A[src * a.lda + k] : 0.0f;
    float bv = 0.0f;
    if (n < a.N && k < a.K) bv = a.b_is_nk ? a.B[n * a.ldb + k] : a.B[k * a.ldb + n];
    t.B[kk][r] = bv;
  }
  static __device__ __forceinline__ void accumulate(const Tile& t, int tx, int ty, float (&acc)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < TK; ++kk) {
      float x[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = t.A[kk][ty + 16 * i], w[i] = t.B[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(x[i], w[j], acc[i][j]);
    }
  }
  static __device__ __forceinline__ float output(const Args& a, float acc, int64_t n, int64_t) {
    const float c = a.alpha * acc;
    return a.epi.bias ? c + a.epi.bias[n] : c;
  }
  static __device__ __forceinline__ float* out(const Args& a) { return a.C; }
  static __device__ __forceinline__ int64_t ld(const Args& a) { return a.ldc; }
};

}  // namespace

void epilogue(int64_t M, int64_t N, const float* G, int64_t ldg, float* C, int64_t ldc, const Epilogue& e,
              cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  if (!e.bias && !e.gelu && !e.residual && G == C && ldg == ldc) return;
  SHIFTADD_LAUNCH(epilogue_kernel, blocks_for(M * N), kThreads, 0, stream)(M, N, G, ldg, C, ldc, e.bias, e.gelu,
                                                                           e.residual, e.ldr);
}

void to_half(int64_t n, const float* x, void* y, cudaStream_t stream) {
  if (n <= 0) return;
  SHIFTADD_LAUNCH(to_half_kernel, blocks_for(n), kThreads, 0, stream)(n, x, static_cast<__half*>(y));
}

void gemm_rows(const GemmArgs& a, const RowMap& rows, cudaStream_t stream) {
  launch_row_tiled<DenseRows>(a, rows, stream);
}

}  // namespace shiftadd::kernels::cuda
