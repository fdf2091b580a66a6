#pragma once
// CUDA kernels of the CUDA backend (engine/cuda_backend.cpp). Same conventions as
// kernels/kernels.h and kernels/shift_kernels.h: pointers (here: device pointers), sizes and
// strides, the same argument structs and the same meaning as the `ref::` kernels; every launcher
// enqueues on `stream` and returns at once (no synchronisation, no allocation), so a whole
// forward can be captured into a CUDA graph. Only compiled with SHIFTADD_HAS_CUDA.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::cuda {

// ----- dense helpers (gemm_epilogue.cu) -----------------------------------------------------
// C[m, n] = epilogue(G[m, n]) for the Epilogue of kernels.h (bias, exact GELU, residual);
// G may equal C (the GEMM wrote C), the residual must not alias C unless G == C.
void epilogue(int64_t M, int64_t N, const float* G, int64_t ldg, float* C, int64_t ldc,
              const Epilogue& e, cudaStream_t stream);
// fp32 -> fp16 (round to nearest even); y is __half*.
void to_half(int64_t n, const float* x, void* y, cudaStream_t stream);
// Row selection and output epilogue of an MoE expert (all defaults: a plain layer). Rows m of
// the layer are the positions of the MoE plan: the kernel reads input row perm[m] and writes
// output row perm[m] (gather and scatter fused), only for *lo <= m < *hi (read on the device).
// After the layer's own bias (and a shift layer's scale): the combine (kernels.h), then GELU.
struct RowMap {
  const int32_t* lo = nullptr;    // null: 0
  const int32_t* hi = nullptr;    // null: M
  const int32_t* perm = nullptr;  // null: identity
  Combine combine = Combine::None;
  bool gelu = false;
};

// A tiled fp32 GEMM (C = A B^T + bias, B stored [N, K]) over the rows of a RowMap: the MoE dense
// expert, whose token count is only known on the device.
void gemm_rows(const GemmArgs& a, const RowMap& rows, cudaStream_t stream);

// ----- norm / elementwise (norm_gelu.cu) -----------------------------------------------------
void layernorm(const LayerNormArgs& a, cudaStream_t stream);
void add(int64_t n, const float* a, const float* b, float alpha, float* y, cudaStream_t stream);
void mean_tokens(const MeanTokensArgs& a, cudaStream_t stream);
void take_tokens(const TakeTokensArgs& a, cudaStream_t stream);
void embed_tokens(const EmbedTokensArgs& a, cudaStream_t stream);

// ----- attention (attention.cu) --------------------------------------------------------------
constexpr int64_t kMaxHeadDim = 128;
// Fused scores + online softmax + weighted sum, fp32; a.d <= kMaxHeadDim.
void attention(const AttentionArgs& a, cudaStream_t stream);

// ----- convolutions (conv.cu) ----------------------------------------------------------------
// Unfolds the conv input into col[B*OH*OW, Cin*kh*kw] (column order ci, ky, kx: the weight's
// [Cout, Cin*kh*kw] row order), so conv = col W^T + bias, written token-major by one GEMM.
void im2col(const Conv2dArgs& a, float* col, cudaStream_t stream);
void dwconv3x3(const DwConv3x3Args& a, cudaStream_t stream);

// ----- KSH hash and additive attention (ksh_additive.cu) -------------------------------------
// y[r*ldy + h*d + c] = x[r*ldx + h*d + c] / ||x[r*ldx + h*d : ... + d]||  (zero rows stay zero).
void l2norm_heads(int64_t rows, int64_t H, int64_t d, const float* x, int64_t ldx, float* y, int64_t ldy,
                  cudaStream_t stream);
// Scratch floats ksh_hash needs: D[B, H, N, m] plus sigma[B, H]. Unlike ref::ksh_hash, the
// rows must already be normalised (l2norm_heads) and a.streams must be 1.
size_t ksh_scratch_floats(const KshArgs& a);
void ksh_hash(const KshArgs& a, float* scratch, cudaStream_t stream);
// kv_scratch: additive_scratch_floats(a) floats (the per-image, per-head KV sums).
size_t additive_scratch_floats(const AdditiveAttentionArgs& a);
void additive_attention(const AdditiveAttentionArgs& a, float* kv_scratch, cudaStream_t stream);

// ----- shift linear (shift_linear.cu) --------------------------------------------------------
// Exact mode is bit-for-bit ref::shift_linear (the exact integer sum of Q16.16 activations
// times 2^(14+s), rounded once); fast mode is bit-for-bit ref's fast mode before GELU (per-token
// int8 activations times the int8 window of the codes, dp4a int8 dot products), reading the row
// scales from a.panel.row_scale. a.scale (may be null) is the per-output scale; a.residual,
// a.rows, a.panel.w and a.work are not used (rows come from `rows`). Rows and the combine / GELU
// as `rows` says: the MoE shift expert, or a plain ShiftLinear. `scratch`:
// shift_linear_scratch_floats(a) floats (fast mode's per-row quantisation constants).
size_t shift_linear_scratch_floats(const ShiftLinearArgs& a);
void shift_linear(const ShiftLinearArgs& a, const RowMap& rows, float* scratch, cudaStream_t stream);

// ----- MoE (moe.cu) ---------------------------------------------------------------------------
// expert[m] = logits1 > logits0 (double accumulation rounded to fp32, as ref::moe_router).
void moe_router(const RouterArgs& a, cudaStream_t stream);
// perm: expert-0 rows ascending, then expert-1 rows ascending; counts[0..1] (int32, device) and
// counts64[0..1] (int64, device or pinned host memory; may be null). Two parallel kernels over
// 4096-row tiles, one launch when M <= 4096; tile_scratch holds moe_plan_scratch_ints(M) ints.
size_t moe_plan_scratch_ints(int64_t M);
void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int32_t* counts, int64_t* counts64,
              int32_t* tile_scratch, cudaStream_t stream);

// Fills n floats with `value` (test poisoning and debugging).
void fill(int64_t n, float value, float* y, cudaStream_t stream);

}  // namespace shiftadd::kernels::cuda
