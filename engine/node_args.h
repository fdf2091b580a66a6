#pragma once
// Kernel arguments of a graph node: what every backend passes its kernels for one node at one
// batch size. Pointers come from the node's weights (host memory) and the NodeBuffers; a device
// backend swaps the weight pointers for their device copies (engine/cuda_backend.cpp).
#include <cstddef>
#include <cstdint>

#include "engine/backend.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::node_args {

using namespace kernels;

// Kernel arguments for a node, shared by both instantiations.
inline GemmArgs linear_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& in = g.sample_shape(n.inputs[0]);
  const Tensor& w = n.weights[0];
  GemmArgs a;
  a.M = b.batch * shape_numel(in) / in.back();
  a.K = in.back();
  a.N = w.dim(0);
  a.A = b.in[0];
  a.lda = a.K;
  a.B = w.data<float>();
  a.ldb = a.K;
  a.b_is_nk = true;
  a.C = b.out;
  a.ldc = a.N;
  a.epi.bias = n.weights[1].defined() ? n.weights[1].data<float>() : nullptr;
  a.epi.gelu = n.p.gelu;
  if (n.inputs.size() > 1) {
    a.epi.residual = b.in[1];
    a.epi.ldr = a.N;
  }
  return a;
}

inline AttentionArgs attention_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  AttentionArgs a;
  // Planning calls this without buffers (null); offsetting a null pointer is UB, so k and v
  // stay null then.
  auto at = [](const float* p, int64_t offset) { return p ? p + offset : p; };
  a.B = b.batch;
  a.H = n.p.heads;
  a.scale = n.p.scale;
  int64_t C = 0;
  if (n.inputs.size() == 2) {  // q [Nq, C], k|v [Nkv, 2C]
    const Shape& sq = g.sample_shape(n.inputs[0]);
    const Shape& skv = g.sample_shape(n.inputs[1]);
    C = sq[1];
    a.Nq = sq[0];
    a.Nkv = skv[0];
    a.q = b.in[0];
    a.q_ld = C;
    a.q_bstride = a.Nq * C;
    a.k = b.in[1];
    a.v = at(b.in[1], C);
    a.k_ld = a.v_ld = 2 * C;
    a.k_bstride = a.v_bstride = a.Nkv * 2 * C;
  } else {  // q|k|v [N, 3C]
    const Shape& s = g.sample_shape(n.inputs[0]);
    const int64_t N = s[0];
    C = s[1] / 3;
    a.Nq = a.Nkv = N;
    a.q = b.in[0];
    a.k = at(b.in[0], C);
    a.v = at(b.in[0], 2 * C);
    a.q_ld = a.k_ld = a.v_ld = 3 * C;
    a.q_bstride = a.k_bstride = a.v_bstride = N * 3 * C;
  }
  a.d = C / n.p.heads;
  a.out = b.out;
  a.o_ld = C;
  a.o_bstride = a.Nq * C;
  return a;
}

inline Conv2dArgs conv_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [Cin, H, W], or [H*W, Cin] with a grid
  const Tensor& w = n.weights[0];
  Conv2dArgs a;
  a.B = b.batch;
  a.channels_last = n.p.grid_h > 0;
  a.Cin = a.channels_last ? s[1] : s[0];
  a.H = a.channels_last ? n.p.grid_h : s[1];
  a.W = a.channels_last ? n.p.grid_w : s[2];
  a.Cout = w.dim(0);
  a.kh = w.dim(2);
  a.kw = w.dim(3);
  a.stride = n.p.stride;
  a.pad = n.p.pad;
  a.x = b.in[0];
  a.w = w.data<float>();
  a.bias = n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  a.out = b.out;
  return a;
}

inline DwConv3x3Args dwconv_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  DwConv3x3Args a;
  a.B = b.batch;
  a.H = n.p.grid_h;
  a.W = n.p.grid_w;
  a.C = g.sample_shape(n.inputs[0])[1];
  a.x = b.in[0];
  a.w = n.weights[0].data<float>();
  a.bias = n.weights[1].defined() && n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  a.gelu = n.p.gelu;
  a.out = b.out;
  return a;
}

inline MeanTokensArgs mean_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [N, C]
  MeanTokensArgs a;
  a.B = b.batch;
  a.N = s[0];
  a.C = s[1];
  a.x = b.in[0];
  a.out = b.out;
  return a;
}

inline EmbedTokensArgs embed_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [Np, C]
  EmbedTokensArgs a;
  a.B = b.batch;
  a.Np = s[0];
  a.C = s[1];
  a.P = n.weights[0].defined() ? n.weights[0].numel() / s[1] : 0;
  a.patches = b.in[0];
  a.prefix = a.P ? n.weights[0].data<float>() : nullptr;
  a.pos = n.weights[1].defined() ? n.weights[1].data<float>() : nullptr;
  a.out = b.out;
  return a;
}

inline LayerNormArgs layernorm_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  LayerNormArgs a;
  a.cols = s.back();
  a.rows = b.batch * shape_numel(s) / a.cols;
  a.x = b.in[0];
  a.ldx = a.cols;
  a.gamma = n.weights[0].data<float>();
  a.beta = n.weights[1].data<float>();
  a.eps = n.p.eps;
  a.y = b.out;
  a.ldy = a.cols;
  return a;
}

constexpr size_t align64(size_t n) { return (n + 63) / 64 * 64; }

inline int64_t rows_of(const Graph& g, const Node& n, int64_t batch) {
  const Shape& in = g.sample_shape(n.inputs[0]);
  return batch * shape_numel(in) / in.back();
}

// Per-output scale of a shift layer (weights[2] of ShiftLinear, weights[6] of MoeLinear), or null.
inline const float* shift_scale(const Node& n) {
  const size_t i = n.op == OpKind::MoeLinear ? 6 : 2;
  return n.weights.size() > i && n.weights[i].defined() && n.weights[i].numel() > 0
             ? n.weights[i].data<float>()
             : nullptr;
}

inline ShiftPanel shift_panel(const Node& n) {
  const ShiftPanelTensors& t = n.prepared.shift;
  ShiftPanel p;
  if (!t.w.defined()) return p;
  p.w = t.w.data<int8_t>();
  p.colsum = t.colsum.data<int32_t>();
  p.row_scale = t.row_scale.data<float>();
  return p;
}

// A ShiftLinear node, or (with its weights offset: codes at 4) the shift expert of a MoeLinear
// over `M` gathered rows; `work` is the exact mode's work buffer (cpu::shift_linear_work_bytes).
inline ShiftLinearArgs shift_args(const Graph& g, const Node& n, const NodeBuffers& b, ShiftMode mode,
                                  void* work = nullptr) {
  ShiftLinearArgs a;
  const size_t w0 = n.op == OpKind::MoeLinear ? 4 : 0;
  const Tensor& codes = n.weights[w0];
  const Tensor& bias = n.weights[w0 + 1];
  a.M = rows_of(g, n, b.batch);
  a.K = codes.dim(1);
  a.N = codes.dim(0);
  a.x = b.in[0];
  a.ldx = a.K;
  a.codes = codes.data<uint8_t>();
  a.ldw = a.K;
  a.bias = bias.defined() && bias.numel() > 0 ? bias.data<float>() : nullptr;
  a.y = b.out;
  a.ldy = a.N;
  a.mode = mode;
  a.scale = shift_scale(n);
  if (n.op == OpKind::ShiftLinear) {
    a.gelu = n.p.gelu;
    if (n.inputs.size() > 1) {
      a.residual = b.in[1];
      a.ldr = a.N;
    }
  }
  a.panel = shift_panel(n);
  a.work = work;
  return a;
}

// MoE layout in the work buffer: expert[M] u8 | perm[M] i32 | rows [M, K] floats, holding the
// dense expert's gathered input and then the shift expert's exact-mode work (q(x) and its bias).
inline size_t moe_work_bytes(const Graph& g, const Node& n, int64_t batch) {
  const int64_t M = rows_of(g, n, batch), K = n.weights[2].dim(1), N = n.weights[2].dim(0);
  return align64(M) + align64(4 * M) + align64(4 * (M * K + 16 + N));
}
inline std::byte* moe_rows_work(const Graph& g, const Node& n, int64_t batch, std::byte* work) {
  const int64_t M = rows_of(g, n, batch);
  return work + align64(M) + align64(4 * M);
}

// KSH attention over a packed q|k|v input (ViT blocks; one input) rather than qk and v (two).
inline bool ksh_from_qkv(const Node& n) { return n.inputs.size() == 1; }

// Hashed streams: the shared qk (upstream), or q then k of a packed q|k|v.
inline int64_t ksh_streams(const Node& n) { return ksh_from_qkv(n) ? 2 : 1; }

// The codes of all streams, [streams, B, H, N] uint16 (nbits <= 16) or uint64.
inline size_t ksh_codes_bytes(const Graph& g, const Node& n, int64_t batch) {
  return align64(static_cast<size_t>(ksh_streams(n) * (n.p.nbits <= 16 ? 2 : 8) * batch * n.p.heads *
                                     g.sample_shape(n.output)[0]));
}
// Start of stream `which`'s codes (0: queries or shared, 1: keys) in `codes`.
inline void* ksh_stream_codes(const Graph& g, const Node& n, int64_t batch, void* codes, int which) {
  return static_cast<std::byte*>(codes) +
         which * (n.p.nbits <= 16 ? 2 : 8) * batch * n.p.heads * g.sample_shape(n.output)[0];
}

// Hash arguments over the node's raw input rows: every stream, codes into `codes`.
inline KshArgs ksh_args(const Graph& g, const Node& n, const NodeBuffers& b, void* codes) {
  const Shape& s = g.sample_shape(n.output);
  const int64_t C = s[1];
  KshArgs a;
  a.B = b.batch;
  a.H = n.p.heads;
  a.N = s[0];
  a.d = C / n.p.heads;
  a.m = n.p.anchors;
  a.nbits = n.p.nbits;
  a.qk = b.in[0];
  a.qk_ld = (ksh_from_qkv(n) ? 3 : 1) * C;
  a.qk_bstride = s[0] * a.qk_ld;
  a.streams = ksh_streams(n);
  a.stream_offset = C;
  a.anchors = n.weights[0].data<float>();
  a.mvec = n.weights[1].data<float>();
  a.A = n.weights[2].data<float>();
  a.codes = codes;
  a.prepared = n.prepared.ksh.defined() && n.prepared.ksh.numel() ? n.prepared.ksh.raw() : nullptr;
  return a;
}

// `codes`: key (or shared) codes; `qcodes`: query codes of the packed-qkv form.
inline AdditiveAttentionArgs additive_args(const Graph& g, const Node& n, const NodeBuffers& b,
                                           const void* codes, const void* qcodes = nullptr) {
  const Shape& s = g.sample_shape(n.output);
  const int64_t C = s[1];
  AdditiveAttentionArgs a;
  a.B = b.batch;
  a.H = n.p.heads;
  a.N = s[0];
  a.d = C / n.p.heads;
  a.nbits = n.p.nbits;
  a.codes = codes;
  a.qcodes = qcodes;
  if (ksh_from_qkv(n)) {
    a.v = b.in[0] ? b.in[0] + 2 * C : nullptr;
    a.v_ld = 3 * C;
  } else {
    a.v = b.in[1];
    a.v_ld = C;
  }
  a.v_bstride = s[0] * a.v_ld;
  a.taps = n.weights[3].data<float>();
  a.out = b.out;
  a.o_ld = C;
  a.o_bstride = s[0] * C;
  return a;
}

}  // namespace shiftadd::node_args
