// Shift linear on packed 5-bit codes (spec section 3; core/shift_codes.h for the code).
// Exact mode: T = sum_k g_k * X_k * 2^(14 + s_k) + (Bq << 14) as an exact integer, y = fp32(T) *
// 2^-30, i.e. ref::shift_linear bit for bit (integer sums are exact in any order, and the int64
// -> fp32 conversion rounds to nearest even on both sides); see ShiftExactRows for how fp64
// keeps it exact. Fast mode: ref's int8 semantics (kernels/shift_kernels.h): a pre-pass finds
// each row's int8 step, then int8 activations times the int8 window of the codes, four products
// per dp4a into int32 (exact), and ref's epilogue fma(acc, step * ws, bq) with explicitly
// rounded operations: bit for bit ref's fast mode.
//
// Tiling (row_tiled.cuh): a block of 256 threads computes a 64 x 64 output tile (4 x 4 per
// thread); 32-wide K slices of the quantized activations and of the decoded weights (exact) or
// int8 weights (fast) are staged in shared memory, quantized once per slice by the shared
// __host__ __device__ helpers.
#include "core/shift_codes.h"
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
                                               int64_t k, int64_t) {
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
  static __device__ __forceinline__ float output(const Args& a, int64_t acc, int64_t n, int64_t) {
    const int64_t B = a.bias ? quantize_q16(a.bias[n]) : 0;
    const float y = static_cast<float>(acc + B * (int64_t{1} << 14)) * 0x1p-30f;
    return a.scale ? y * a.scale[n] : y;
  }
  static __device__ __forceinline__ float* out(const Args& a) { return a.y; }
  static __device__ __forceinline__ int64_t ld(const Args& a) { return a.ldy; }
};

// Fast mode's per-row constants, one warp per map position m: inv = 127 / amax and the step
// amax / 127 (scratch[2m], scratch[2m + 1]), as ref computes them.
__global__ void int8_row_scales_kernel(ShiftLinearArgs a, RowMap rows, float* scratch) {
  const int64_t lo = rows.lo ? static_cast<int64_t>(*rows.lo) : 0;
  const int64_t hi = rows.hi ? min(a.M, static_cast<int64_t>(*rows.hi)) : a.M;
  const int64_t m = int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (m >= a.M) return;  // whole warps
  const bool mine = m >= lo && m < hi;
  const float* x = mine ? a.x + (rows.perm ? static_cast<int64_t>(rows.perm[m]) : m) * a.ldx : nullptr;
  float amax = 0.0f;
  for (int64_t k = lane; mine && k < a.K; k += 32) amax = fmaxf(amax, fabsf(x[k]));  // fmaxf drops NaN
  amax = warp_max(amax);
  if (mine && lane == 0) {
    scratch[2 * m] = int8_quant_inv(amax);
    scratch[2 * m + 1] = int8_quant_step(amax);
  }
}

struct ShiftInt8Rows {
  struct Args {
    ShiftLinearArgs s;
    const float* q;  // per map position: inv, step
    int64_t M, N, K;
  };
  using Acc = int32_t;
  static constexpr int TK = 32;
  struct Tile {  // rows of 4-deep k groups as int32 words for dp4a
    int8_t X[kRowTileM][TK + 4];
    int8_t W[kRowTileN][TK + 4];
  };
  static __device__ __forceinline__ void stage(const Args& a, Tile& t, int r, int kk, int64_t src, int64_t n,
                                               int64_t k, int64_t m) {
    t.X[r][kk] = (src >= 0 && k < a.K) ? quantize_int8(a.s.x[src * a.s.ldx + k], a.q[2 * m]) : int8_t{0};
    int8_t w = 0;
    if (n < a.N && k < a.K) w = shift_code_int8(a.s.codes[n * a.s.ldw + k], row_exponent_of_scale(a.s.panel.row_scale[n]));
    t.W[r][kk] = w;
  }
  static __device__ __forceinline__ void accumulate(const Tile& t, int tx, int ty, int32_t (&acc)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < TK; kk += 4) {
      int x[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        memcpy(&x[i], &t.X[ty + 16 * i][kk], 4);
        memcpy(&w[i], &t.W[tx + 16 * i][kk], 4);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(x[i], w[j], acc[i][j]);
    }
  }
  static __device__ __forceinline__ float output(const Args& a, int32_t acc, int64_t n, int64_t m) {
    const float scale = a.s.scale ? a.s.scale[n] : 1.0f;
    const float ws = __fmul_rn(a.s.panel.row_scale[n], scale);
    const float bq = __fmul_rn(a.s.bias ? quantize_q16_float(a.s.bias[n]) : 0.0f, scale);
    return __fmaf_rn(static_cast<float>(acc), __fmul_rn(a.q[2 * m + 1], ws), bq);
  }
  static __device__ __forceinline__ float* out(const Args& a) { return a.s.y; }
  static __device__ __forceinline__ int64_t ld(const Args& a) { return a.s.ldy; }
};

}  // namespace

size_t shift_linear_scratch_floats(const ShiftLinearArgs& a) {
  return a.mode == ShiftMode::Fast ? static_cast<size_t>(2 * a.M) : 0;
}

void shift_linear(const ShiftLinearArgs& a, const RowMap& rows, float* scratch, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return;
  if (a.mode == ShiftMode::Exact) {
    launch_row_tiled<ShiftExactRows>(a, rows, stream);
    return;
  }
  constexpr int kWarps = kThreads / 32;
  SHIFTADD_LAUNCH(int8_row_scales_kernel, blocks_for(a.M, kWarps), kThreads, 0, stream)(a, rows, scratch);
  launch_row_tiled<ShiftInt8Rows>(ShiftInt8Rows::Args{a, scratch, a.M, a.N, a.K}, rows, stream);
}

}  // namespace shiftadd::kernels::cuda
