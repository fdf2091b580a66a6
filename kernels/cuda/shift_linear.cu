// Shift linear on packed 5-bit codes (spec section 3; engine/shift_codes.h for the code).
// Exact mode: T = sum_k g_k * X_k * 2^(14 + s_k) + (Bq << 14) as an exact integer, y = fp32(T) *
// 2^-30, i.e. ref::shift_linear bit for bit (integer sums are exact in any order, and the int64
// -> fp32 conversion rounds to nearest even on both sides); see ShiftExactRows for how fp64
// keeps it exact. Fast mode: the ref fast semantics, int32 arithmetic right shifts of saturated
// Q16.16 activations, summed 8 at a time in int32 (|term| <= 2^27) and then widened to int64:
// bit for bit ref's fast mode too, and multiplication-free (shift, conditional negate, add).
//
// Tiling (row_tiled.cuh): a block of 256 threads computes a 64 x 64 output tile (4 x 4 per
// thread); 32-wide K slices of the quantized activations and of the decoded weights (exact) or
// codes (fast) are staged in shared memory, quantized once per slice by the shared
// __host__ __device__ helpers.
#include "engine/shift_codes.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/row_tiled.cuh"

namespace shiftadd::kernels::cuda {
namespace {

// Exact mode: the weight g * 2^(14 + s) and the Q16.16 activation X are exact in fp64, so is
// their product (|X| <= 2^31, |product| <= 2^45), and a sum of 32 such products stays below
// 2^50: the fp64 FMA chain over one 32-wide K slice is exact integer arithmetic. Each slice's
// sum is then converted (exactly) to int64 and accumulated there. The result is the same
// integer T as ref's int64 shift-and-add, so bit for bit the same y. The fp64 pipe does the
// power-of-two scaling (one DFMA per term instead of ~8 integer ops for an int64 shift,
// conditional negate and add).
struct ShiftExactRows {
  using Args = ShiftLinearArgs;
  using Acc = int64_t;
  static constexpr int TK = 32;
  struct Tile {
    double X[TK][kRowTileM + 1];
    double W[TK][kRowTileN + 1];
  };
  static __device__ __forceinline__ void stage(const Args& a, Tile& t, int r, int kk, int64_t src, int64_t n,
                                               int64_t k) {
    t.X[kk][r] = (src >= 0 && k < a.K) ? static_cast<double>(quantize_q16(a.x[src * a.ldx + k])) : 0.0;
    const uint8_t c = (n < a.N && k < a.K) ? a.codes[n * a.ldw + k] : kShiftZeroCode;
    // g * 2^(14 + s): exact (an integer in [-2^14, 2^14]).
    t.W[kk][r] = shift_code_is_zero(c) ? 0.0 : static_cast<double>(shift_code_sign(c) * (1 << shift_code_lshift(c)));
  }
  static __device__ __forceinline__ void accumulate(const Tile& t, int tx, int ty, int64_t (&acc)[4][4]) {
    double part[4][4] = {};
#pragma unroll 8
    for (int kk = 0; kk < TK; ++kk) {
      double x[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = t.X[kk][ty + 16 * i], w[i] = t.W[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = fma(x[i], w[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += static_cast<int64_t>(part[i][j]);
  }
  static __device__ __forceinline__ float output(const Args& a, int64_t acc, int64_t n) {
    const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
    return static_cast<float>(acc + B * (int64_t{1} << 14)) * 0x1p-30f;
  }
  static __device__ __forceinline__ float* out(const Args& a) { return a.y; }
  static __device__ __forceinline__ int64_t ld(const Args& a) { return a.ldy; }
};

// Fast mode: ref's fast semantics in int32 lanes, shift-and-add only.
struct ShiftFastRows {
  using Args = ShiftLinearArgs;
  using Acc = int64_t;
  static constexpr int TK = 32;
  struct Tile {
    int32_t X[TK][kRowTileM + 1];
    uint8_t W[TK][kRowTileN + 4];
  };
  static __device__ __forceinline__ void stage(const Args& a, Tile& t, int r, int kk, int64_t src, int64_t n,
                                               int64_t k) {
    int32_t X = (src >= 0 && k < a.K) ? quantize_q16(a.x[src * a.ldx + k]) : 0;
    X = X > (1 << 27) ? (1 << 27) : X < -(1 << 27) ? -(1 << 27) : X;
    t.X[kk][r] = X;
    t.W[kk][r] = (n < a.N && k < a.K) ? a.codes[n * a.ldw + k] : kShiftZeroCode;
  }
  static __device__ __forceinline__ void accumulate(const Tile& t, int tx, int ty, int64_t (&acc)[4][4]) {
#pragma unroll
    for (int k8 = 0; k8 < TK; k8 += 8) {
      int32_t part[4][4] = {};
#pragma unroll
      for (int kk = k8; kk < k8 + 8; ++kk) {
        int32_t x[4];
        uint8_t c[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = t.X[kk][ty + 16 * i], c[i] = t.W[kk][tx + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (shift_code_is_zero(c[j])) continue;
          const int rs = -shift_code_exponent(c[j]);
          const bool neg = c[j] & kShiftSignBit;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int32_t v = x[i] >> rs;
            part[i][j] += neg ? -v : v;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
    }
  }
  static __device__ __forceinline__ float output(const Args& a, int64_t acc, int64_t n) {
    const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
    return static_cast<float>(acc + B) * 0x1p-16f;
  }
  static __device__ __forceinline__ float* out(const Args& a) { return a.y; }
  static __device__ __forceinline__ int64_t ld(const Args& a) { return a.ldy; }
};

}  // namespace

void shift_linear(const ShiftLinearArgs& a, const RowMap& rows, cudaStream_t stream) {
  if (a.mode == ShiftMode::Exact)
    launch_row_tiled<ShiftExactRows>(a, rows, stream);
  else
    launch_row_tiled<ShiftFastRows>(a, rows, stream);
}

}  // namespace shiftadd::kernels::cuda
