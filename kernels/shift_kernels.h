#pragma once
// ShiftAddViT primitive kernels (spec ../shared/spec/shiftaddvit.md sections 2, 3, 4):
// shift-code packing, shift linear (exact and fast), KSH hashing, additive attention on packed
// codes, and the MoE routing helpers. Same conventions as kernels.h: pointers, sizes and
// strides only; `ref::` is the plain single-threaded oracle, `cpu::` the optimized version with
// the same meaning (tests/test_shift_kernels.cpp checks one against the other).
#include <cstddef>
#include <cstdint>

namespace shiftadd {
class ThreadPool;

namespace kernels {

// ----- shift linear (spec section 3) -------------------------------------------------------
//
// y[m, n] = q(x[m]) . W[n] + q(bias[n]),  W = decode_shift_weight(codes) = g * 2^s,
// q(x) = clamp(floor(x * 2^16) / 2^16, -32768, 32767)   (see engine/shift_codes.h).
//
// Exact: with X = quantize_q16(x), Bq = quantize_q16(bias), the exact value of the float
// formula is T * 2^-30 with T = sum_k g_k * (X_k << (14 + s_k)) + (Bq << 14), accumulated in
// int64 (no overflow for K < 2^18). y = fp32(T) * 2^-30, i.e. the exact result rounded ONCE to
// the nearest fp32 (ties to even). Upstream's fp32 matmul rounds at every partial sum, so it
// differs from this by its own accumulation error (~1e-7 * sqrt(K) relative); this result is
// the correctly rounded one and is independent of thread count and SIMD path (bit-for-bit).
//
// Fast: real integer shift-and-add on 32-bit lanes with arithmetic right shifts:
// T16 = sum_k g_k * (Xs_k >> -s_k) + Bq, y = fp32(T16) * 2^-16, where Xs = X saturated to
// +-2^27 (|x| < 2048; larger activations saturate) so 32-bit partial sums cannot overflow.
// Each right shift truncates toward -inf: |y_fast - y_exact| <= (nonzero weights) * 2^-16.
enum class ShiftMode { Exact, Fast };

struct ShiftLinearArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* x = nullptr;      // [M, K], row stride ldx
  int64_t ldx = 0;
  const uint8_t* codes = nullptr;  // [N, K] 5-bit codes (engine/shift_codes.h), row stride ldw
  int64_t ldw = 0;
  const float* bias = nullptr;   // [N] raw (unquantized) bias, may be null
  float* y = nullptr;            // [M, N], row stride ldy
  int64_t ldy = 0;
  ShiftMode mode = ShiftMode::Exact;
};

// ----- KSH hash (spec section 2 step 3) ----------------------------------------------------
//
// Per image b and head h, over the N tokens qk[n] = qk + b*qk_bstride + n*qk_ld + h*d
// (already L2-normalised):
//   D[n,j]  = sum_c (qk[n,c] - anchors[h,j,c])^2          anchors [H, m, d]
//   sigma   = mean of D over all n < N, j < m (this image and head only)
//   Kf[n,j] = exp(-D[n,j] / (2 sigma)) - mvec[h,j]       mvec [H, m]
//   y[n,k]  = sum_j Kf[n,j] * A[h,k,j]                    A [H, nbits, m]
//   bit k of code[b,h,n] = (y[n,k] > 0)
// codes: [B, H, N] uint16 when nbits <= 16, else uint64 (nbits <= 64); bit k = 1 << k.
// preact (optional): y as [B, H, N, nbits] floats, for boundary-aware comparisons.
// sigma == 0 (all tokens on every anchor) gives exp(-0/0): guarded to Kf = 1 - mvec.
struct KshArgs {
  int64_t B = 0, H = 0, N = 0, d = 0, m = 0, nbits = 0;
  const float* qk = nullptr;
  int64_t qk_ld = 0, qk_bstride = 0;
  const float* anchors = nullptr;
  const float* mvec = nullptr;
  const float* A = nullptr;
  void* codes = nullptr;
  float* preact = nullptr;
};

// ----- additive attention on packed codes (spec section 2 steps 4-8) ------------------------
//
// Per image b and head h, V rows v[n] = v + b*v_bstride + n*v_ld + h*d, codes c[n] as above:
//   KV[k] = sum of v[n] over tokens n whose bit k is set        (additions only)
//   Y[n]  = sum of KV[k] over the set bits k of c[n]             (additions only)
//   Z[n]  = 0.5 * v[n] + Y[n] / pi;  Z[n] /= ||Z[n]||_2 (left as is when the norm is 0)
//   Z[n] += sum_t taps[h, t] * v[n - 4 + t]   (t < 9, zero outside [0, N))
//   out[b, n, h*d + c] = Z[n, c]   at out + b*o_bstride + n*o_ld + h*d + c
//
// With separate query codes qcodes (ViT blocks hash q and k apart; docs/format.md), KV is summed
// over the key codes `codes` and Y over the query codes: Y[n] = sum of KV[k] over set bits of
// qcodes[n]. qcodes == nullptr means the same codes (upstream's shared q = k).
struct AdditiveAttentionArgs {
  int64_t B = 0, H = 0, N = 0, d = 0, nbits = 16;
  const void* codes = nullptr;   // [B, H, N] uint16 (nbits <= 16) or uint64
  const void* qcodes = nullptr;  // same layout, or nullptr
  const float* v = nullptr;
  int64_t v_ld = 0, v_bstride = 0;
  const float* taps = nullptr;  // [H, 9] (Conv2d weight (H, 1, 9, 1))
  float* out = nullptr;
  int64_t o_ld = 0, o_bstride = 0;
};

// ----- MoE routing helpers (spec section 4) ------------------------------------------------
//
// Router: logits[m, e] = Wg[e] . x[m] + bg[e] (e < 2); expert[m] = argmax, ties (and NaN) to
// expert 0: expert = logits[m,1] > logits[m,0].
struct RouterArgs {
  int64_t M = 0, K = 0;
  const float* x = nullptr;  // [M, K], row stride ldx
  int64_t ldx = 0;
  const float* Wg = nullptr;  // [2, K]
  const float* bg = nullptr;  // [2], may be null
  float* logits = nullptr;    // [M, 2], may be null
  uint8_t* expert = nullptr;  // [M]
};

// Per-expert index lists in one caller buffer `perm` of M entries: perm[0, counts[0]) are the
// rows routed to expert 0 in ascending order, perm[counts[0], M) those of expert 1, ascending.
// O(M), allocates nothing.
// gather: dst[i] = src[perm[i]] for i in [begin, end) (dst row i - begin), `cols` floats each.
// scatter: dst[perm[i]] = src[i - begin] for i in [begin, end); with log_exp_combine the
// exact-mode combine dst = log(exp(src) + 2.220446e-16f) in fp32 is applied on the way.

namespace ref {
void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes);
void shift_linear(const ShiftLinearArgs& a);
void ksh_hash(const KshArgs& a);
void additive_attention(const AdditiveAttentionArgs& a);
void moe_router(const RouterArgs& a);
void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]);
void moe_gather(int64_t begin, int64_t end, int64_t cols, const int32_t* perm, const float* src,
                int64_t lds, float* dst, int64_t ldd);
void moe_scatter(int64_t begin, int64_t end, int64_t cols, const int32_t* perm, const float* src,
                 int64_t lds, float* dst, int64_t ldd, bool log_exp_combine);
// y = log(exp(x) + 2.220446e-16f) elementwise in fp32 (in place allowed).
void moe_combine(int64_t n, const float* x, float* y);
}  // namespace ref

namespace cpu {
// Per-thread scratch (bytes) to reserve on the pool before calling these.
size_t shift_linear_scratch_bytes(const ShiftLinearArgs& a);
size_t ksh_scratch_bytes(const KshArgs& a);
size_t additive_attention_scratch_bytes(const AdditiveAttentionArgs& a);

void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes,
                      ThreadPool& pool);
void shift_linear(const ShiftLinearArgs& a, ThreadPool& pool);
void ksh_hash(const KshArgs& a, ThreadPool& pool);
void additive_attention(const AdditiveAttentionArgs& a, ThreadPool& pool);
void moe_router(const RouterArgs& a, ThreadPool& pool);
void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]);
void moe_gather(int64_t begin, int64_t end, int64_t cols, const int32_t* perm, const float* src,
                int64_t lds, float* dst, int64_t ldd, ThreadPool& pool);
void moe_scatter(int64_t begin, int64_t end, int64_t cols, const int32_t* perm, const float* src,
                 int64_t lds, float* dst, int64_t ldd, bool log_exp_combine, ThreadPool& pool);
void moe_combine(int64_t n, const float* x, float* y, ThreadPool& pool);
}  // namespace cpu

}  // namespace kernels
}  // namespace shiftadd
