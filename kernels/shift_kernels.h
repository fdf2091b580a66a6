#pragma once
// ShiftAddViT primitive kernels (spec ../shared/spec/shiftaddvit.md sections 2, 3, 4):
// shift-code packing, shift linear (exact and fast), KSH hashing, additive attention on packed
// codes, and the MoE routing helpers. Same conventions as kernels.h: pointers, sizes and
// strides only; `ref::` is the plain single-threaded oracle, `cpu::` the optimized version with
// the same meaning (tests/test_shift_kernels.cpp checks one against the other).
#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace shiftadd {
class ThreadPool;

namespace kernels {

// ----- shift linear (spec section 3) -------------------------------------------------------
//
// A shift layer's weights W = g * 2^s come as 5-bit codes (core/shift_codes.h). Two modes:
//
// Exact (upstream's float semantics): y = q(x) W^T + q(b), q the Q16.16 floor quantizer.
//   ref:: computes it exactly, T = sum_k g_k (X_k << (14 + s_k)) + (Bq << 14) in int64 with
//   X = quantize_q16(x), and rounds once: y = fp32(T) * 2^-30 (the correctly rounded value; the
//   oracle). cpu:: computes what upstream computes, an fp32 GEMM of q(x) against the decoded
//   weights (exact powers of two), so it differs from ref:: by fp32 accumulation only
//   (<= ~K * 2^-24 of sum |terms|; upstream's own GEMM differs from ref:: the same way).
//
// Fast (integer units): per token m, x is quantized to int8 with amax_m = max_k |x[m, k]|
//   (int8_quant_inv / quantize_int8 in core/shift_codes.h), each weight row n is the int8
//   window of its codes with row scale r_n = 2^(e_n - 6) (shift_code_int8), and
//     acc[m, n] = sum_k xq[m, k] * wq[n, k]                (int32, exact)
//     y[m, n]   = fma(fp32(acc), step_m * ws_n, bq_n),   step_m = int8_quant_step(amax_m),
//                 ws_n = r_n * scale_n,  bq_n = quantize_q16_float(b_n) * scale_n
//   ref:: and every cpu:: path compute exactly this (bit for bit, before GELU).
//
// Both modes then apply, in order: per-output scale (exact mode: y *= scale_n; fast mode has it
// folded into ws_n and bq_n), the MoE combine (kernels.h), GELU (exact erf; the cpu:: paths use
// a ~1e-7 approximation), and y += residual.
enum class ShiftMode { Exact, Fast };

// The fast kernels' prepared weights, derived once per layer from the codes (pack_shift_panel):
// int8 weights in 32-column panels of 4-deep k groups, [ceil(N/32)][ceil(K/4)][32][4] (zero
// padded), their column sums (for the u8 activation offset of VNNI) and the row scales r_n.
struct ShiftPanel {
  const int8_t* w = nullptr;
  const int32_t* colsum = nullptr;  // [N] sum_k wq[n, k]
  const float* row_scale = nullptr;  // [N] r_n = shift_row_scale(e_n)
};
constexpr int64_t kShiftPanelCols = 32, kShiftPanelDepth = 4;

struct ShiftLinearArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* x = nullptr;      // [M, K], row stride ldx
  int64_t ldx = 0;
  const uint8_t* codes = nullptr;  // [N, K] 5-bit codes (core/shift_codes.h), row stride ldw
  int64_t ldw = 0;
  const float* bias = nullptr;   // [N] raw (unquantized) bias, may be null
  float* y = nullptr;            // [M, N], row stride ldy
  int64_t ldy = 0;
  ShiftMode mode = ShiftMode::Exact;
  // Epilogue after the layer's bias: y *= scale[n] (may be null); the MoE combine (kernels.h);
  // GELU; y += residual (rows mapped like y's; may be y itself, with ldr == ldy).
  const float* scale = nullptr;
  Combine combine = Combine::None;
  bool gelu = false;
  const float* residual = nullptr;
  int64_t ldr = 0;
  // Row map (the MoE shift expert): row m of the layer reads x row rows[m] and writes y (and
  // reads residual) row rows[m]: gather and scatter fused. Null: row m is row m.
  const int32_t* rows = nullptr;
  // cpu:: only: the prepared weights (fast mode; from pack_shift_panel on these codes) and a
  // work buffer of shift_linear_work_bytes(*this) bytes (exact mode); exact mode's GEMM reads
  // the decoded weights packed by cpu::gemm_pack_b when given (GemmArgs::B_packed).
  ShiftPanel panel;
  void* work = nullptr;
  const float* w_packed = nullptr;
  int64_t w_packed_nr = 0;
};

// ----- KSH hash (spec section 2 step 3) ----------------------------------------------------
//
// Per stream s, image b and head h, over the N token rows
// qk[n] = qk + s*stream_offset + b*qk_bstride + n*qk_ld + h*d:
//   q[n]    = qk[n] / ||qk[n]||_2                         (a zero row stays zero)
//   D[n,j]  = sum_c (q[n,c] - anchors[h,j,c])^2          anchors [H, m, d]
//   sigma   = mean of D over all n < N, j < m (this stream, image and head only)
//   Kf[n,j] = exp(-D[n,j] / (2 sigma)) - mvec[h,j]       mvec [H, m]
//   y[n,k]  = sum_j Kf[n,j] * A[h,k,j]                    A [H, nbits, m]
//   bit k of code[s,b,h,n] = (y[n,k] > 0)
// Streams: upstream hashes one shared qk (streams = 1); a ViT block hashes its q and its k with
// the same hash (streams = 2, stream_offset = C: the k columns of a packed q|k|v).
// codes: [streams, B, H, N] uint16 when nbits <= 16, else uint64 (nbits <= 64); bit k = 1 << k.
// preact (optional): y as [streams, B, H, N, nbits] floats, for boundary-aware comparisons.
// sigma == 0 (all tokens on every anchor) gives exp(-0/0): guarded to Kf = 1 - mvec.
struct KshArgs {
  int64_t B = 0, H = 0, N = 0, d = 0, m = 0, nbits = 0;
  const float* qk = nullptr;
  int64_t qk_ld = 0, qk_bstride = 0;
  int64_t streams = 1, stream_offset = 0;
  const float* anchors = nullptr;
  const float* mvec = nullptr;
  const float* A = nullptr;
  void* codes = nullptr;
  float* preact = nullptr;
  // cpu:: only: a work buffer of ksh_work_bytes(*this) bytes, and optionally the layer's
  // constants prepared once by ksh_prepare (else they are prepared in the work buffer per call).
  void* work = nullptr;
  const void* prepared = nullptr;
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
  void* work = nullptr;  // cpu:: only: additive_attention_work_bytes(*this, threads) bytes
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

// The whole MoE linear (cpu:: fast mode), fused: with many rows, one parallel task per block of
// rows routes them, plans them and runs both experts on them while the block is in L2 (one
// pass over the input and one parallel region instead of three); with few, all rows are routed
// and planned first and one task per slice of output columns runs both experts. Each task packs
// the dense weight (or its slice) for itself, so it suits small dense weights
// (moe_fused_suits). router.expert and perm ([M]) are work buffers; dense and shift are the
// experts' arguments for all M rows, without row lists (dense.M and shift.M are ignored).
struct MoeFusedArgs {
  RouterArgs router;
  GemmArgs dense;
  ShiftLinearArgs shift;
  int32_t* perm = nullptr;
};

// Per-expert index lists in one caller buffer `perm` of M entries: perm[0, counts[0]) are the
// rows routed to expert 0 in ascending order, perm[counts[0], M) those of expert 1, ascending.
// O(M), allocates nothing.
// gather: dst[i] = src[perm[i]] for i in [begin, end) (dst row i - begin), `cols` floats each
// (the dense expert's input rows; its GEMM scatters through GemmArgs::c_rows, the shift expert
// reads and writes its rows through ShiftLinearArgs::rows).

namespace ref {
void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes);
void shift_linear(const ShiftLinearArgs& a);
void ksh_hash(const KshArgs& a);
void additive_attention(const AdditiveAttentionArgs& a);
void moe_router(const RouterArgs& a);
void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]);
}  // namespace ref

namespace cpu {
// Per-thread scratch (bytes) to reserve on the pool before calling these.
size_t shift_linear_scratch_bytes(const ShiftLinearArgs& a);
size_t ksh_work_bytes(const KshArgs& a);
// The hash's constants (anchors, mvec, A rearranged) for KshArgs::prepared: depend on the
// layer's weights and shapes only (H, m, d, nbits).
size_t ksh_prepared_bytes(const KshArgs& a);
void ksh_prepare(const KshArgs& a, void* out);
size_t additive_attention_scratch_bytes(const AdditiveAttentionArgs& a);
size_t additive_attention_work_bytes(const AdditiveAttentionArgs& a, int threads);

size_t shift_linear_work_bytes(const ShiftLinearArgs& a);

void pack_shift_codes(int64_t n, const float* shift, const float* sign, uint8_t* codes,
                      ThreadPool& pool);
// The fast kernels' panel of an [N, K] code matrix: `w` holds shift_panel_bytes(N, K) bytes,
// colsum and row_scale N values each. Returns how many nonzero weights the int8 window dropped.
size_t shift_panel_bytes(int64_t N, int64_t K);
int64_t pack_shift_panel(const uint8_t* codes, int64_t N, int64_t K, int64_t ldw, int8_t* w,
                         int32_t* colsum, float* row_scale);
void shift_linear(const ShiftLinearArgs& a, ThreadPool& pool);
void ksh_hash(const KshArgs& a, ThreadPool& pool);
void additive_attention(const AdditiveAttentionArgs& a, ThreadPool& pool);
void moe_router(const RouterArgs& a, ThreadPool& pool);
void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]);
// Whether moe_linear_fused pays off for this layer (fast mode and a dense weight of at most 32k
// values). It splits the rows into blocks where there are ~256 per thread, else the output
// columns.
bool moe_fused_suits(const MoeFusedArgs& a);
// Needs per-thread scratch of max(gemm_scratch_bytes(), shift_linear_scratch_bytes(a.shift));
// counts[e] = rows routed to expert e.
void moe_linear_fused(const MoeFusedArgs& a, int64_t counts[2], ThreadPool& pool);
}  // namespace cpu

}  // namespace kernels
}  // namespace shiftadd
