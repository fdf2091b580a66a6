#pragma once
// Kernel signatures. Kernels see only pointers, sizes and strides: they know nothing of files,
// names, tensors or models. Every op has a plain reference in `ref::` (the oracle, obviously
// correct, single-threaded) and an optimized version in `cpu::` with the same meaning; the
// kernel harness (tests/test_kernels.cpp) checks one against the other.
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace shiftadd {
class ThreadPool;

namespace kernels {

// An MoE expert's output combine (spec section 4), after the bias, before GELU:
//   LogExp: upstream's log(exp(y) + 2.220446e-16f) in fp32 (exact mode): -36.0437 for y below
//           about -36, +inf above 88.7228, y (to within rounding) in between;
//   Limits: those limits only, max(y, -36.0437) and +inf above 88.7228 (fast mode; within 1e-7
//           of LogExp for y > -20, at most ln 2 apart near the floor).
enum class Combine : uint8_t { None, LogExp, Limits };
constexpr float kCombineEps = 2.220446e-16f;
constexpr float kCombineFloor = -36.0436534f;  // logf(kCombineEps)
constexpr float kCombineMax = 88.7228317f;     // the largest y whose expf is finite
inline float combine_value(float y, Combine c) {
  if (c == Combine::LogExp) return std::log(std::exp(y) + kCombineEps);
  if (c == Combine::Limits) return y > kCombineMax ? INFINITY : y < kCombineFloor ? kCombineFloor : y;
  return y;
}

// Fused epilogue applied to C = alpha * A op(B):
//   C *= scale[n]; C += bias[n]; C = combine(C); if gelu: C = gelu(C); if residual: C += residual[m, n].
// `residual` may alias C (then C += result is computed in place; ldr must equal ldc) but must
// not otherwise overlap it.
struct Epilogue {
  const float* scale = nullptr;  // per-column multiplier (shift layers' output scale), or null
  Combine combine = Combine::None;
  const float* bias = nullptr;
  bool gelu = false;
  const float* residual = nullptr;
  int64_t ldr = 0;  // row stride of residual
};

// GEMM: C[M,N] = alpha * A[M,K] * op(B) (+ epilogue), row-major with row strides lda/ldb/ldc.
// b_is_nk: B is stored [N,K] (PyTorch Linear weight layout, i.e. C = A B^T);
// otherwise B is stored [K,N].
// B_codes: instead of B, 5-bit shift codes [N,K] (core/shift_codes.h, b_is_nk, row stride ldb)
// decoded to their exact fp32 powers of two while B is packed (shift layers' exact mode).
// c_rows: row m of C (and of the residual) is row c_rows[m] (the MoE scatter); null: row m.
// a_rows: row m of A is row a_rows[m] (the MoE dense expert reads its tokens in place); null: row m.
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;
  int64_t lda = 0;
  const float* B = nullptr;
  const uint8_t* B_codes = nullptr;
  int64_t ldb = 0;
  bool b_is_nk = true;
  float* C = nullptr;
  int64_t ldc = 0;
  const int32_t* c_rows = nullptr;
  const int32_t* a_rows = nullptr;
  float alpha = 1.0f;
  Epilogue epi;
  // cpu:: only: B (or its decoded codes) packed once by cpu::gemm_pack_b for the kernels with
  // panels B_packed_nr columns wide; used when the running kernels have that width, else B is
  // packed per call. Column slices of the GEMM move it by n0 * K (n0 a multiple of the width).
  const float* B_packed = nullptr;
  int64_t B_packed_nr = 0;
};

// LayerNorm over the last dim of `rows` rows of `cols`: y = (x - mean) / sqrt(var + eps) * g + b.
struct LayerNormArgs {
  int64_t rows = 0, cols = 0;
  const float* x = nullptr;
  int64_t ldx = 0;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float eps = 1e-6f;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Multi-head softmax attention, one (batch, head) at a time:
//   out[b, n, h*d + c] = sum_j softmax_j(scale * q_n . k_j) v[j, c]
// q rows: q + b*q_bstride + n*q_ld + h*d (likewise k and v over Nkv tokens);
// out rows: out + b*o_bstride + n*o_ld + h*d.
struct AttentionArgs {
  int64_t B = 0, H = 0, Nq = 0, Nkv = 0, d = 0;
  const float* q = nullptr;
  int64_t q_ld = 0, q_bstride = 0;
  const float* k = nullptr;
  int64_t k_ld = 0, k_bstride = 0;
  const float* v = nullptr;
  int64_t v_ld = 0, v_bstride = 0;
  float* out = nullptr;
  int64_t o_ld = 0, o_bstride = 0;
  float scale = 1.0f;
};

// 2-D convolution (groups = 1), weight [Cout, Cin, kh, kw], optional bias, output written
// token-major: out[b, oy*OW + ox, co] (what a ViT/PVT patch embedding wants). The input is NCHW
// (x[b, ci, iy, ix], the image), or with channels_last token-major x[b, iy*W + ix, ci] (PVT's
// stage patch embeddings and spatial-reduction convs, which read the previous tokens).
struct Conv2dArgs {
  int64_t B = 0, Cin = 0, H = 0, W = 0, Cout = 0, kh = 0, kw = 0;
  int64_t stride = 1, pad = 0;
  bool channels_last = false;
  const float* x = nullptr;
  const float* w = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  int64_t OH() const { return (H + 2 * pad - kh) / stride + 1; }
  int64_t OW() const { return (W + 2 * pad - kw) / stride + 1; }
};

// A conv as a GEMM over unfolded patches (every backend's conv): output rows [row0, row0 + rows)
// (row = (b*OH + oy)*OW + ox) from cols[rows, Cin*kh*kw] (column order ci, ky, kx: the weight's
// row order) times the weight [Cout, Cin*kh*kw], plus the bias.
inline GemmArgs conv_gemm_args(const Conv2dArgs& a, const float* cols, int64_t row0, int64_t rows) {
  GemmArgs g;
  g.M = rows;
  g.N = a.Cout;
  g.K = a.Cin * a.kh * a.kw;
  g.A = cols;
  g.lda = g.K;
  g.B = a.w;
  g.ldb = g.K;
  g.b_is_nk = true;
  g.C = a.out + row0 * a.Cout;
  g.ldc = a.Cout;
  g.epi.bias = a.bias;
  return g;
}

// Token embedding for ViT: out[b, 0..P) = prefix tokens (cls, dist: [P, C]),
// out[b, P + i] = patches[b, i]; then out[b, t] += pos[t] (pos may be null).
struct EmbedTokensArgs {
  int64_t B = 0, Np = 0, P = 0, C = 0;
  const float* patches = nullptr;  // [B, Np, C]
  const float* prefix = nullptr;   // [P, C]
  const float* pos = nullptr;      // [P + Np, C]
  float* out = nullptr;            // [B, P + Np, C]
};

// Depthwise 3x3 convolution, stride 1, zero padding 1, over an H x W grid of token-major data:
//   out[b, y*W + x, c] = act(bias[c] + sum_{ky,kx} in[b, (y+ky-1)*W + (x+kx-1), c] * w[ky, kx, c])
// with act = exact GELU if `gelu`, else identity. The weight is taps-major [3, 3, C] (PyTorch's
// [C, 1, 3, 3] transposed) so a vector of channels reads one contiguous weight row per tap.
struct DwConv3x3Args {
  int64_t B = 0, H = 0, W = 0, C = 0;
  const float* x = nullptr;     // [B, H*W, C]
  const float* w = nullptr;     // [3, 3, C]
  const float* bias = nullptr;  // [C] or null
  bool gelu = false;
  float* out = nullptr;  // [B, H*W, C]; must not overlap x
};

// Token selection: out[b, t, c] = x[b, first + t, c] for t < count (a strided row copy).
struct TakeTokensArgs {
  int64_t B = 0, N = 0, C = 0, first = 0, count = 0;
  const float* x = nullptr;  // [B, N, C]
  float* out = nullptr;      // [B, count, C]
};

// Mean over tokens: out[b, c] = (1/N) sum_n x[b, n, c].
struct MeanTokensArgs {
  int64_t B = 0, N = 0, C = 0;
  const float* x = nullptr;  // [B, N, C]
  float* out = nullptr;      // [B, C]
};

namespace ref {
void gemm(const GemmArgs& a);
void layernorm(const LayerNormArgs& a);
void gelu(int64_t n, const float* x, float* y);  // exact erf GELU
void attention(const AttentionArgs& a);
void conv2d(const Conv2dArgs& a);
void embed_tokens(const EmbedTokensArgs& a);
void dwconv3x3(const DwConv3x3Args& a);
void mean_tokens(const MeanTokensArgs& a);
void take_tokens(const TakeTokensArgs& a);
// y = alpha * (a + b), elementwise over n
void add(int64_t n, const float* a, const float* b, float alpha, float* y);
}  // namespace ref

namespace cpu {
// Which SIMD path the CPU kernels use on this machine: "avx512vnni" (AVX-512 with the VNNI int8
// dot products), "avx512", "avx2" or "scalar".
const char* simd_name();
// Restricts the SIMD path to `name` (one of the above) so tests and benchmarks can exercise
// every path on one machine; returns false (changing nothing) if the CPU lacks it.
// Not thread-safe with respect to kernels running concurrently.
bool set_simd(const char* name);
// Per-thread scratch (bytes) the cpu kernels need for these sizes; reserve it on the pool
// before calling them.
size_t gemm_scratch_bytes();
// B of `a` (N, K, B or B_codes, ldb, b_is_nk) packed for this machine's GEMM kernels into dst
// (gemm_packed_b_floats(a) floats, 64-byte aligned): a layer's weights, once, at planning.
// Returns the panel width, for GemmArgs::B_packed_nr.
int64_t gemm_packed_b_floats(const GemmArgs& a);
int64_t gemm_pack_b(const GemmArgs& a, float* dst);
int64_t gemm_panel_width();  // of the kernels running now: what gemm_pack_b would return
size_t attention_scratch_bytes(const AttentionArgs& a);
size_t conv2d_scratch_bytes(const Conv2dArgs& a);

void gemm(const GemmArgs& a, ThreadPool& pool);
void layernorm(const LayerNormArgs& a, ThreadPool& pool);
void gelu(int64_t n, const float* x, float* y, ThreadPool& pool);
void attention(const AttentionArgs& a, ThreadPool& pool);
void conv2d(const Conv2dArgs& a, ThreadPool& pool);
void embed_tokens(const EmbedTokensArgs& a, ThreadPool& pool);
void dwconv3x3(const DwConv3x3Args& a, ThreadPool& pool);
void mean_tokens(const MeanTokensArgs& a, ThreadPool& pool);
void take_tokens(const TakeTokensArgs& a, ThreadPool& pool);
void add(int64_t n, const float* a, const float* b, float alpha, float* y, ThreadPool& pool);
}  // namespace cpu

}  // namespace kernels
}  // namespace shiftadd
