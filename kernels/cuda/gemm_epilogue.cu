// Dense GEMM helpers: the fused epilogue after cuBLAS (bias, exact GELU, residual), fp16
// conversion for the fp16 math mode, and a tiled fp32 GEMM over the rows of a RowMap (the MoE
// dense expert inside a captured CUDA graph: split point and permutation read on the device).
#include <cuda_fp16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

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

// 64 x 64 output tile per block of 256 threads, 4 x 4 outputs per thread, K in steps of 16.
// Rows are RowMap positions: input and output row perm[m], only lo <= m < hi.
constexpr int TM = 64, TN = 64, TK = 16;
__global__ void __launch_bounds__(256) gemm_rows_kernel(int64_t M, int64_t N, int64_t K, const float* A,
                                                        int64_t lda, const float* B, int64_t ldb, bool b_is_nk,
                                                        float* C, int64_t ldc, float alpha, const float* bias,
                                                        RowMap rows) {
  const int64_t m0 = int64_t{blockIdx.x} * TM, n0 = int64_t{blockIdx.y} * TN;
  __shared__ float As[TK][TM + 1];
  __shared__ float Bs[TK][TN + 1];
  __shared__ int64_t src_row[TM];
  if (!map_tile_rows(rows, M, m0, TM, src_row)) return;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += TK) {
    for (int i = threadIdx.x; i < TM * TK; i += 256) {
      const int r = i / TK, kk = i % TK;
      const int64_t k = k0 + kk, srow = src_row[r];
      As[kk][r] = (srow >= 0 && k < K) ? A[srow * lda + k] : 0.0f;
      const int64_t n = n0 + r;
      float bv = 0.0f;
      if (n < N && k < K) bv = b_is_nk ? B[n * ldb + k] : B[k * ldb + n];
      Bs[kk][r] = bv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i], b[i] = Bs[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t drow = src_row[ty + 16 * i];
    if (drow < 0) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= N) continue;
      float c = alpha * acc[i][j];
      if (bias) c += bias[n];
      C[drow * ldc + n] = row_epilogue(c, n, rows);
    }
  }
}

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
  if (a.M <= 0 || a.N <= 0) return;
  // Row tiles on x (up to 2^31 - 1 blocks), the few column tiles on y (65535 at most).
  const dim3 grid(static_cast<unsigned>((a.M + TM - 1) / TM), static_cast<unsigned>((a.N + TN - 1) / TN));
  SHIFTADD_LAUNCH(gemm_rows_kernel, grid, 256, 0, stream)(a.M, a.N, a.K, a.A, a.lda, a.B, a.ldb, a.b_is_nk, a.C, a.ldc,
                                                          a.alpha, a.epi.bias, rows);
}

}  // namespace shiftadd::kernels::cuda
