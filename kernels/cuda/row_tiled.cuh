#pragma once
// The tiling shared by the GEMM-like kernels over the rows of a RowMap (the MoE dense expert,
// the exact and the fast shift linear): a block of 256 threads computes a 64 x 64 output tile,
// 4 x 4 outputs per thread (rows ty + 16 i, columns tx + 16 j); K advances in slices of P::TK
// that P::stage puts in shared memory (one element of the activation and of the weight per
// call), P::accumulate adds a slice into the thread's accumulators, and P::output turns an
// accumulator into the value the RowMap epilogue (combine, GELU) gets.
//
// A policy P provides: Args (with M, N, K), Acc, Tile (its shared-memory arrays), TK, and
//   stage(a, tile, r, kk, src_row, n, k, m) r: tile row, kk: slice column, m: its map position;
//                                          src_row < 0 or n >= N or k >= K: the neutral element
//   accumulate(tile, tx, ty, acc)
//   output(a, acc, n, m) -> float          m: the row's map position
//   out(a) -> float*, ld(a) -> int64_t     where row m of the output lives
#include "kernels/cuda/common.cuh"

namespace shiftadd::kernels::cuda {

constexpr int kRowTileM = 64, kRowTileN = 64, kRowTileThreads = 256;

template <class P>
__global__ void __launch_bounds__(kRowTileThreads) row_tiled_kernel(typename P::Args a, RowMap rows) {
  const int64_t m0 = int64_t{blockIdx.x} * kRowTileM, n0 = int64_t{blockIdx.y} * kRowTileN;
  __shared__ int64_t src_row[kRowTileM];  // input and output row of tile row r, -1 outside [lo, hi)
  if (!map_tile_rows(rows, a.M, m0, kRowTileM, src_row)) return;
  __shared__ typename P::Tile tile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  typename P::Acc acc[4][4] = {};
  for (int64_t k0 = 0; k0 < a.K; k0 += P::TK) {
    for (int i = threadIdx.x; i < kRowTileM * P::TK; i += kRowTileThreads) {
      const int r = i / P::TK, kk = i % P::TK;
      P::stage(a, tile, r, kk, src_row[r], n0 + r, k0 + kk, m0 + r);
    }
    __syncthreads();
    P::accumulate(tile, tx, ty, acc);
    __syncthreads();
  }
  float* out = P::out(a);
  const int64_t ld = P::ld(a);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t drow = src_row[ty + 16 * i];
    if (drow < 0) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= a.N) continue;
      out[drow * ld + n] = row_epilogue(P::output(a, acc[i][j], n, m0 + ty + 16 * i), rows);
    }
  }
}

// Row tiles on x (up to 2^31 - 1 blocks), the few column tiles on y (65535 at most).
template <class P>
void launch_row_tiled(const typename P::Args& a, const RowMap& rows, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return;
  const dim3 grid(static_cast<unsigned>((a.M + kRowTileM - 1) / kRowTileM),
                  static_cast<unsigned>((a.N + kRowTileN - 1) / kRowTileN));
  SHIFTADD_LAUNCH(row_tiled_kernel<P>, grid, kRowTileThreads, 0, stream)(a, rows);
}

}  // namespace shiftadd::kernels::cuda
