// Shift linear on packed 5-bit codes (spec section 3; engine/shift_codes.h for the code).
// Exact mode: T = sum_k g_k * X_k * 2^(14 + s_k) + (Bq << 14) as an exact integer, y = fp32(T) *
// 2^-30, i.e. ref::shift_linear bit for bit (integer sums are exact in any order, and the int64
// -> fp32 conversion rounds to nearest even on both sides); see shift_exact_kernel for how fp64
// keeps it exact. Fast mode: the ref fast semantics, int32 arithmetic right shifts of saturated
// Q16.16 activations, summed 8 at a time in int32 (|term| <= 2^27) and then widened to int64:
// bit for bit ref's fast mode too, and multiplication-free (shift, conditional negate, add).
//
// Tiling: a block of 256 threads computes a 64 x 64 output tile (4 x 4 per thread); 32-wide K
// slices of the quantized activations (int32) and of the codes (bytes) are staged in shared
// memory. Activations are quantized once per slice by the shared __host__ __device__ helpers.
#include "engine/shift_codes.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace shiftadd::kernels::cuda {
namespace {

constexpr int TM = 64, TN = 64, TK = 32;

// Exact mode: the weight g * 2^(14 + s) and the Q16.16 activation X are exact in fp64, so is
// their product (|X| <= 2^31, |product| <= 2^45), and a sum of 32 such products stays below
// 2^50: the fp64 FMA chain over one 32-wide K slice is exact integer arithmetic. Each slice's
// sum is then converted (exactly) to int64 and accumulated there. The result is the same
// integer T as ref's int64 shift-and-add, so bit for bit the same y. The fp64 pipe does the
// power-of-two scaling (one DFMA per term instead of ~8 integer ops for an int64 shift,
// conditional negate and add).
__global__ void __launch_bounds__(256) shift_exact_kernel(ShiftLinearArgs a, RowMap rows) {
  const int64_t m0 = int64_t{blockIdx.x} * TM, n0 = int64_t{blockIdx.y} * TN;
  __shared__ int64_t src_row[TM];  // input and output row of tile row r, -1 outside [lo, hi)
  if (!map_tile_rows(rows, a.M, m0, TM, src_row)) return;
  __shared__ double Xs[TK][TM + 1];
  __shared__ double Ws[TK][TN + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  int64_t acc[4][4] = {};
  for (int64_t k0 = 0; k0 < a.K; k0 += TK) {
    for (int i = threadIdx.x; i < TM * TK; i += 256) {
      const int r = i / TK, kk = i % TK;
      const int64_t n = n0 + r, k = k0 + kk;
      Xs[kk][r] = (src_row[r] >= 0 && k < a.K) ? static_cast<double>(quantize_q16(a.x[src_row[r] * a.ldx + k])) : 0.0;
      const uint8_t c = (n < a.N && k < a.K) ? a.codes[n * a.ldw + k] : kShiftZeroCode;
      // g * 2^(14 + s): exact (an integer in [-2^14, 2^14]).
      Ws[kk][r] = shift_code_is_zero(c) ? 0.0
                                        : static_cast<double>(shift_code_sign(c) * (1 << shift_code_lshift(c)));
    }
    __syncthreads();
    double part[4][4] = {};
#pragma unroll 8
    for (int kk = 0; kk < TK; ++kk) {
      double x[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = Xs[kk][ty + 16 * i], w[i] = Ws[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = fma(x[i], w[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += static_cast<int64_t>(part[i][j]);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t drow = src_row[ty + 16 * i];
    if (drow < 0) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= a.N) continue;
      const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
      const float y = static_cast<float>(acc[i][j] + B * (int64_t{1} << 14)) * 0x1p-30f;
      a.y[drow * a.ldy + n] = row_epilogue(y, n, rows);
    }
  }
}

// Fast mode: ref's fast semantics in int32 lanes, shift-and-add only.
__global__ void __launch_bounds__(256) shift_fast_kernel(ShiftLinearArgs a, RowMap rows) {
  const int64_t m0 = int64_t{blockIdx.x} * TM, n0 = int64_t{blockIdx.y} * TN;
  __shared__ int64_t src_row[TM];  // input and output row of tile row r, -1 outside [lo, hi)
  if (!map_tile_rows(rows, a.M, m0, TM, src_row)) return;
  __shared__ int32_t Xs[TK][TM + 1];
  __shared__ uint8_t Ws[TK][TN + 4];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  int64_t acc[4][4] = {};
  for (int64_t k0 = 0; k0 < a.K; k0 += TK) {
    for (int i = threadIdx.x; i < TM * TK; i += 256) {
      const int r = i / TK, kk = i % TK;
      const int64_t n = n0 + r, k = k0 + kk;
      int32_t X = (src_row[r] >= 0 && k < a.K) ? quantize_q16(a.x[src_row[r] * a.ldx + k]) : 0;
      X = X > (1 << 27) ? (1 << 27) : X < -(1 << 27) ? -(1 << 27) : X;
      Xs[kk][r] = X;
      Ws[kk][r] = (n < a.N && k < a.K) ? a.codes[n * a.ldw + k] : kShiftZeroCode;
    }
    __syncthreads();
#pragma unroll
    for (int k8 = 0; k8 < TK; k8 += 8) {
      int32_t part[4][4] = {};
#pragma unroll
      for (int kk = k8; kk < k8 + 8; ++kk) {
        int32_t x[4];
        uint8_t c[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = Xs[kk][ty + 16 * i], c[i] = Ws[kk][tx + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (shift_code_is_zero(c[j])) continue;
          const int rs = -shift_code_exponent(c[j]);
          const bool neg = c[j] & kShiftSignBit;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int32_t t = x[i] >> rs;
            part[i][j] += neg ? -t : t;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
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
      if (n >= a.N) continue;
      const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
      const float y = static_cast<float>(acc[i][j] + B) * 0x1p-16f;
      a.y[drow * a.ldy + n] = row_epilogue(y, n, rows);
    }
  }
}

}  // namespace

void shift_linear(const ShiftLinearArgs& a, const RowMap& rows, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return;
  // Row tiles on x (up to 2^31 - 1 blocks), the few column tiles on y (65535 at most).
  const dim3 grid(static_cast<unsigned>((a.M + TM - 1) / TM), static_cast<unsigned>((a.N + TN - 1) / TN));
  if (a.mode == ShiftMode::Exact)
    SHIFTADD_LAUNCH(shift_exact_kernel, grid, 256, 0, stream)(a, rows);
  else
    SHIFTADD_LAUNCH(shift_fast_kernel, grid, 256, 0, stream)(a, rows);
}

}  // namespace shiftadd::kernels::cuda
